"""Packed micro-batches (`models/packing.py`): the sequences end to end without padding give the padded
batch's log-probs, entropies and gradients, for a text model and for Qwen2.5-VL with images of several
sizes (its 3D positions per sequence), and plain `sdpa` behaviour is unchanged elsewhere."""

import json

import torch
from PIL import Image

from observe_r1.models.packing import PACKED_SDPA, can_pack, pack
from observe_r1.models.policy import completion_logprobs, load_model
from observe_r1.rollout.base import Rollout
from observe_r1.rollout.batch import sequence_inputs
from observe_r1.toy.tiny import build_tiny_lm


def picture(w, h, colour):
    im = Image.new("RGB", (w, h), (255, 255, 255))
    im.paste(Image.new("RGB", (w // 2, h // 2), colour), (w // 4, h // 4))
    return im


def user(n_images, text):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def rollout_of(prompts, lengths, vocab=40, seed=0):
    """Two responses per prompt with the given lengths (right-padded completions of random tokens)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return Rollout(
        prompts=prompts,
        prompt_index=[i // 2 for i in range(len(lengths))],
        group_ids=[i // 2 for i in range(len(lengths))],
        completion_ids=ids * mask,
        completion_mask=mask,
        lengths=torch.tensor(lengths),
        truncated=torch.zeros(len(lengths), dtype=torch.bool),
        texts=[""] * len(lengths),
    )


def compare(model, inputs, tolerance):
    """Padded and packed log-probs, entropies and gradients agree; packing computes fewer positions."""
    mask = inputs["completion_mask"].bool()
    results = []
    for packed in (False, True):
        model.zero_grad()
        logp, ent = completion_logprobs(
            model, dict(inputs), 0.8, entropy=True, entropy_grad=True, packed=packed
        )
        (logp * mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp.detach(), ent.detach(), grads))
    (lp0, e0, g0), (lp1, e1, g1) = results
    torch.testing.assert_close(lp1[mask], lp0[mask], rtol=0, atol=tolerance)
    torch.testing.assert_close(e1[mask], e0[mask], rtol=0, atol=tolerance)
    assert float((lp1[~mask]).abs().sum()) == 0.0 and float((lp0[~mask]).abs().sum()) == 0.0
    assert float((g1 - g0).abs().max()) < 50 * tolerance * max(1.0, float(g0.abs().max()))


def test_packed_text_model_matches_padded(tmp_path, encoder):
    from observe_r1.models.inputs import ChatEncoder

    path = build_tiny_lm(tmp_path / "lm", seed=1)
    model = load_model(str(path))
    assert model.config._attn_implementation == PACKED_SDPA and can_pack(model)
    text = ChatEncoder.from_pretrained(path, max_prompt_length=512)
    prompts = [
        text.encode(user(0, q), [], "s") for q in ("How many?", "Count every red shape in the picture.")
    ]
    rollout = rollout_of(prompts, [7, 1, 12, 4])
    compare(model, sequence_inputs(rollout, [2, 0, 3, 1], text), 2e-5)


def test_packed_vision_language_model_matches_padded(tiny_model_dir, encoder):
    model = load_model(str(tiny_model_dir))
    assert can_pack(model)
    prompts = [
        encoder.encode(user(1, "How many red shapes?"), [picture(112, 112, (200, 30, 30))], "a"),
        encoder.encode(user(2, "Which is larger?"), [picture(168, 84, (0, 90, 200)), picture(56, 112, (0, 0, 0))], "b"),
        encoder.encode(user(0, "No picture here."), [], "c"),
    ]  # fmt: skip
    rollout = rollout_of(prompts, [9, 3, 1, 14, 6, 6])
    inputs = sequence_inputs(rollout, [3, 0, 4, 5, 1, 2], encoder)
    compare(model, inputs, 2e-5)
    # the packed row carries each sequence's 3D positions: image tokens on rows and columns, text restarting
    model_inputs = {k: v for k, v in inputs.items() if not k.startswith("completion")}
    for key in ("pixel_values", "image_grid_thw_distinct", "image_source"):
        del model_inputs[key]
    packed, keep = pack(model, model_inputs, inputs["completion_mask"].bool())
    assert packed["position_ids"].shape == (4, 1, int(inputs["attention_mask"].sum()))
    assert packed["cu_seq_lens_q"].tolist()[1:] == inputs["attention_mask"].sum(1).cumsum(0).tolist()
    assert len(keep) == int(inputs["completion_mask"].sum())
    starts = packed["cu_seq_lens_q"][:-1].long()
    assert packed["position_ids"][0, 0, starts].tolist() == [0] * 6


def test_eager_attention_falls_back_to_padding(tiny_model_dir, encoder):
    model = load_model(str(tiny_model_dir), attn_implementation="eager")
    assert not can_pack(model)
    prompts = [encoder.encode(user(1, "How many?"), [picture(56, 56, (9, 9, 9))], "a")]
    inputs = sequence_inputs(rollout_of(prompts, [3, 5]), [1, 0], encoder)
    a, _ = completion_logprobs(model, dict(inputs), packed=True)
    b, _ = completion_logprobs(model, dict(inputs), packed=False)
    assert torch.equal(a, b)


def test_packed_sdpa_is_sdpa_for_generation_and_is_not_saved(tiny_model_dir, encoder, tmp_path):
    """Without sequence boundaries the registered attention is `sdpa` itself: greedy generation is identical,
    and a saved checkpoint's config names no attention of ours (vLLM and other tools load it)."""
    from transformers import AutoModelForImageTextToText

    from observe_r1.rollout.base import PromptBatch, SamplingParams
    from observe_r1.rollout.hf import HFRollout

    ours = load_model(str(tiny_model_dir)).eval()
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    prompts = [encoder.encode(user(1, "How many?"), [picture(112, 56, (200, 30, 30))], "a"),
               encoder.encode(user(0, "Hi"), [], "b")]  # fmt: skip
    batch = PromptBatch(prompts=prompts, group_ids=[0, 1])
    sampling = SamplingParams(n=1, greedy=True, max_new_tokens=10)
    a = HFRollout(ours, encoder).generate(batch, sampling)
    b = HFRollout(plain, encoder).generate(batch, sampling)
    assert torch.equal(a.completion_ids, b.completion_ids)
    ours.save_pretrained(tmp_path / "saved")
    assert PACKED_SDPA not in (tmp_path / "saved" / "config.json").read_text()
    json.loads((tmp_path / "saved" / "config.json").read_text())
