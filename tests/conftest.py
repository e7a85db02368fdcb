"""Shared fixtures: a tiny model and a small synthetic dataset, built once per test session (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from observe_r1.toy.synth import write_dataset
from observe_r1.toy.tiny import build_tiny_vlm


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-model"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, train=60, test=20, seed=0)
    return out


@pytest.fixture(scope="session")
def shaping(tmp_path_factory):
    """A reward plug-in `digits` (share of digits in the response). A random policy is never correct, so f(d)
    would zero every advantage: training tests shape the reward with it (and turn f(d) off) to get a gradient."""
    path = tmp_path_factory.mktemp("reward") / "shaping.py"
    path.write_text(
        "def digits(completions, **kw):\n    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]\n"
    )
    return path


@pytest.fixture(scope="session")
def encoder(tiny_model_dir):
    from observe_r1.models.inputs import ChatEncoder

    return ChatEncoder.from_pretrained(tiny_model_dir, max_prompt_length=1024)


REALCASES = Path(
    os.environ.get("OBSERVE_R1_REALCASES", Path(__file__).resolve().parents[2] / "shared" / "realcases")
)


@pytest.fixture(scope="session")
def realcases() -> Path:
    """`../shared/realcases`: material from outside the project (peer verdicts, dataset layouts, real Qwen files)."""
    if not REALCASES.is_dir():
        pytest.skip(f"no realcases folder at {REALCASES} (set OBSERVE_R1_REALCASES)")
    return REALCASES
