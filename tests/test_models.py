import logging
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer

from observe_r1.models.inputs import ChatEncoder, PromptError
from observe_r1.toy.tiny import TAG_TOKENS, build_tiny_vlm, count_parameters


def user(n_images, text="How many shapes?"):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def image(w, h, colour=(200, 30, 30)):
    im = Image.new("RGB", (w, h), (255, 255, 255))
    im.paste(Image.new("RGB", (w // 2, h // 2), colour), (w // 4, h // 4))
    return im


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()


def test_loads_with_auto_classes_and_no_token_id_warnings(tiny_model_dir):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
            tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING] + [
        str(w.message) for w in caught
    ]
    assert not [m for m in messages if "token" in m.lower() and "id" in m.lower()], messages
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert count_parameters(model) < 1_000_000
    vocab = model.config.text_config.vocab_size
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        assert 0 <= getattr(model.config.text_config, name) < vocab
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_tokenizer_has_single_token_tags_and_digits(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for tag in TAG_TOKENS:
        assert tok.tokenize(tag) == [tag]
    pieces = tok.tokenize("12345")
    assert pieces == list("12345")
    text = "<observe>\nred circle at (1,2)\n</observe>\n<think>\n3 + 4 = 7\n</think>\n<answer>7</answer>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text  # tags survive decoding


def test_build_is_deterministic_for_a_seed(tmp_path):
    a = load_file(build_tiny_vlm(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_vlm(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_vlm(tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_small_size_has_a_few_million_parameters(tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(build_tiny_vlm(tmp_path, size="small"))
    assert 2_000_000 < count_parameters(model) < 10_000_000


def test_unknown_size_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model size"):
        build_tiny_vlm(tmp_path, size="huge")


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_generate_on_adapter_inputs(model, encoder, n_images):
    images = [image(112, 112), image(168, 84)][:n_images]
    long_text = "How many red shapes are there in this picture?"
    batch = encoder.collate(
        [encoder.encode(user(n_images, long_text), images, "s0"), encoder.encode(user(0), [], "s1")]
    )
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1  # left padding
    width = batch["input_ids"].shape[1]
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert width < out.shape[1] <= width + 5
    assert torch.equal(out[:, :width], batch["input_ids"])
    assert len(encoder.decode(out[:, width:])) == 2


@pytest.mark.parametrize(
    "sizes, min_pixels, max_pixels",
    [
        ([(112, 112)], None, None),
        ([(224, 224), (50, 300)], None, None),
        ([(640, 480)], 3136, 200 * 200),  # downscaled by max_pixels
        ([(20, 20), (30, 90)], 112 * 112, None),  # upscaled by min_pixels
        ([(300, 100), (100, 300), (57, 57)], 56 * 56, 150 * 150),
    ],
)
def test_image_tokens_equal_image_features(model, tiny_model_dir, sizes, min_pixels, max_pixels):
    enc = ChatEncoder.from_pretrained(tiny_model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    images = [image(w, h) for w, h in sizes]
    p = enc.encode(user(len(images)), images, "s")
    n_tokens = sum(t == enc.image_token_id for t in p.input_ids)
    with torch.no_grad():
        features = model.model.get_image_features(p.pixel_values, p.image_grid_thw).pooler_output
    assert n_tokens == sum(f.shape[0] for f in features) == sum(p.image_tokens)
    # the cheap estimate used by the pre-flight check agrees with the processor
    assert [enc.tokens_per_image(w, h) for w, h in sizes] == p.image_tokens
    assert enc.prompt_length(user(len(images)), sizes) == len(p.input_ids)
    if max_pixels:
        assert all(int(g[1] * g[2]) * 14 * 14 <= max_pixels for g in p.image_grid_thw)
    if min_pixels:
        assert all(int(g[1] * g[2]) * 14 * 14 >= min_pixels for g in p.image_grid_thw)
    model(**enc.collate([p]))  # the full forward pass accepts it


def test_preflight_rejects_too_long_prompt_naming_the_sample(tiny_model_dir):
    enc = ChatEncoder.from_pretrained(tiny_model_dir, max_prompt_length=25)
    assert len(enc.encode(user(0), [], "short-one").input_ids) <= 25
    with pytest.raises(
        PromptError, match=r"sample big-one: prompt is \d+ tokens \(16 of them image tokens\)"
    ):
        enc.encode(user(1), [image(112, 112)], "big-one")


def test_placeholder_and_image_count_must_agree(encoder):
    with pytest.raises(PromptError, match="sample x: the prompt has 1 image placeholder"):
        encoder.encode(user(1), [image(112, 112), image(112, 112)], "x")


def test_system_and_assistant_messages_render(encoder):
    messages = [
        {"role": "system", "content": "Be brief."},
        *user(1),
        {"role": "assistant", "content": "<answer>3</answer>"},
    ]
    p = encoder.encode(messages, [image(112, 112)], "chat", add_generation_prompt=False)
    text = encoder.tokenizer.decode(p.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith(
        "<answer>3</answer><|im_end|>\n"
    )


def test_completion_logprobs_and_entropy_match_a_full_forward(model, encoder):
    from observe_r1.models.policy import completion_logprobs

    prompt = encoder.encode([{"role": "user", "content": "How many?"}]).input_ids
    completion = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 24, 25]])
    ids = torch.cat([torch.tensor([prompt, prompt]), completion], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_ids": completion,
              "completion_mask": torch.ones_like(completion)}  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, len(prompt) - 1 : -1].float() / 0.7
    want_logp = torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]
    want_ent = torch.distributions.Categorical(logits=logits).entropy()
    for grad in (False, True):
        logp, ent = completion_logprobs(model, inputs, 0.7, entropy=True, entropy_grad=grad)
        torch.testing.assert_close(logp, want_logp, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ent, want_ent, rtol=1e-4, atol=1e-5)
        assert ent.requires_grad == grad


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_head_equals_the_whole_computation_with_gradients(tiny_model_dir, encoder, packed):
    """The output head scores a few positions at a time (checkpointed, recomputed in the backward): the
    log-probs, entropies and every parameter's gradient equal those of one chunk holding every position
    (issue 24: the [positions, vocab] logits of 8k-token responses took 27.8 GiB per GPU)."""
    from observe_r1.models.policy import completion_logprobs, load_model

    prompt = encoder.encode([{"role": "user", "content": "How many?"}]).input_ids
    completion = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])
    ids = torch.cat([torch.tensor([prompt, prompt]), completion], 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.cat([torch.ones(2, len(prompt), dtype=torch.long), mask], 1),
        "completion_ids": completion,
        "completion_mask": mask,
    }
    results = []
    for rows in (10**6, 3):  # one chunk; chunks of 3 positions
        model = load_model(str(tiny_model_dir))
        logp, ent = completion_logprobs(
            model, dict(inputs), 0.7, entropy_grad=True, packed=packed, chunk_rows=rows
        )
        ((logp * mask).sum() + 0.1 * (ent * mask).sum()).backward()
        results.append((logp.detach(), ent.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (a_logp, a_ent, a_grads), (b_logp, b_ent, b_grads) = results
    torch.testing.assert_close(b_logp, a_logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b_ent, a_ent, rtol=1e-5, atol=1e-6)
    assert a_grads.keys() == b_grads.keys()
    for name, grad in a_grads.items():
        if grad is not None:
            torch.testing.assert_close(b_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_image_tokens_get_3d_rope_positions(model, encoder):
    """Qwen-VL places image tokens by (time, row, column); transformers 5 only does so when the batch says
    which tokens are image tokens (`mm_token_type_ids`), and silently uses 1D text positions otherwise."""
    batch = encoder.collate(
        [encoder.encode(user(1), [image(112, 112)], "s"), encoder.encode(user(0), [], "t")]
    )
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == encoder.image_token_id)
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        batch["mm_token_type_ids"],
        batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    image_rows = positions[1, 0][batch["mm_token_type_ids"][0].bool()]
    assert len(set(image_rows.tolist())) == 4  # 4 x 4 image tokens on 4 rows
    with torch.no_grad():
        logits = model(**batch).logits
        with_3d = model(
            **{k: v for k, v in batch.items() if k != "mm_token_type_ids"}, position_ids=positions
        ).logits
        without = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    torch.testing.assert_close(logits, with_3d)
    assert not torch.allclose(logits[0], without[0])


def test_training_forward_sees_the_positions_generation_saw(model, encoder):
    """Teacher-forcing a greedy completion through the training inputs reproduces it token by token."""
    from observe_r1.rollout.base import PromptBatch, SamplingParams
    from observe_r1.rollout.batch import sequence_inputs
    from observe_r1.rollout.hf import HFRollout

    prompts = [encoder.encode(user(1, "How many red shapes?"), [image(112, 112)], "a"),
               encoder.encode(user(1), [image(168, 84, (0, 90, 200))], "b")]  # fmt: skip
    batch = PromptBatch(prompts=prompts, group_ids=[0, 1])
    rollout = HFRollout(model, encoder).generate(batch, SamplingParams(n=1, greedy=True, max_new_tokens=12))
    inputs = sequence_inputs(rollout, [0, 1], encoder)
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if not k.startswith("completion")}).logits
    width = inputs["completion_ids"].shape[1]
    greedy = logits[:, -width - 1 : -1].argmax(-1)
    mask = inputs["completion_mask"].bool()
    assert torch.equal(greedy[mask], inputs["completion_ids"][mask])


# ------------------------------------------------------------------ issue 24: a model folder's own code


CUSTOM_CODE = """
from pathlib import Path
from transformers import Qwen2Config, Qwen2ForCausalLM

Path("MARKER").write_text("the model folder's code ran")  # transformers runs a copy of this file elsewhere


class MyConfig(Qwen2Config):
    model_type = "my_custom"


class MyModel(Qwen2ForCausalLM):
    config_class = MyConfig
"""


@pytest.fixture
def custom_code_model(tmp_path):
    import json

    from observe_r1.toy.tiny import build_tiny_lm

    out = build_tiny_lm(tmp_path / "custom")
    config = json.loads((out / "config.json").read_text())
    config |= {
        "model_type": "my_custom",
        "auto_map": {"AutoConfig": "custom.MyConfig", "AutoModelForCausalLM": "custom.MyModel"},
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "custom.py").write_text(CUSTOM_CODE.replace("MARKER", str(out / "RAN")))
    return out


def test_a_model_folders_code_never_runs_unless_asked(custom_code_model, monkeypatch, caplog):
    """transformers asked "run the custom code? [y/N]" under our progress bar, and answering y ran the file:
    trust_remote_code is always given, False unless `model.trust_remote_code: true`."""
    from observe_r1.models.policy import load_model

    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")
    with pytest.raises(
        ValueError, match="needs its own Python code to load .* model.trust_remote_code: true"
    ):
        load_model(str(custom_code_model))
    ChatEncoder.from_pretrained(custom_code_model)  # its tokenizer needs no code of the folder's
    assert not asked and not (custom_code_model / "RAN").exists()
    with caplog.at_level("WARNING"):
        model = load_model(str(custom_code_model), trust_remote_code=True)
    assert type(model).__name__ == "MyModel" and (custom_code_model / "RAN").exists() and not asked
    assert "model.trust_remote_code" in caplog.text and "custom.py" in caplog.text
