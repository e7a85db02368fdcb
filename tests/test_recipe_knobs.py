"""The smaller knobs of the recipes, each on its own: which responses rejection sampling keeps, the difficulty
cue's need for ladder data, and stage records."""

from types import SimpleNamespace

import pytest
import torch

from observe_r1.cli import main
from observe_r1.data.dataset import Sample
from observe_r1.recipes.rft import kept_rows


def scored(texts, lengths, correct, traces=None):
    samples = [
        Sample(f"q{g}", [{"role": "user", "content": "how many?"}], [], "2") for g in range(len(texts) // 2)
    ]
    rollout = SimpleNamespace(texts=texts, lengths=torch.tensor(lengths), model_lengths=torch.tensor(lengths),
                              traces=traces)  # fmt: skip
    return SimpleNamespace(
        samples=samples, rollout=rollout, result=SimpleNamespace(correct=torch.tensor(correct))
    )


def test_rft_keeps_the_shortest_correct_or_all_correct(tmp_path):
    got = scored(
        ["long right", "short right", "wrong", "also wrong"], [9, 4, 3, 2], [True, True, False, False]
    )
    shortest = kept_rows([got], "shortest", tmp_path)
    assert [(r["id"], r["rft_response"]) for r in shortest] == [("q0#0", "short right")]
    every = kept_rows([got], "all", tmp_path)
    assert [(r["id"], r["rft_response"]) for r in every] == [("q0#0", "long right"), ("q0#1", "short right")]
    assert every[0]["answer"] == "2" and every[0]["messages"][0]["role"] == "user"


def test_hint_rft_keeps_only_correct_responses_that_used_a_tool(tmp_path):
    from observe_r1.rollout.base import Trace
    from observe_r1.tools.base import CallRecord

    def trace(*errors):
        return Trace(calls=[CallRecord("python", {}, "out", error=e) for e in errors])

    texts = ["right, no call", "right, failed call", "right, a call", "wrong, a call"]
    got = scored(
        texts, [3, 4, 9, 2], [True, True, True, False], [trace(), trace("boom"), trace("", "x"), trace("")]
    )
    assert [r["rft_response"] for r in kept_rows([got], "all", tmp_path, require_tool=True)] == [
        "right, a call"
    ]
    assert len(kept_rows([got], "all", tmp_path)) == 3


def test_the_difficulty_cue_needs_ladder_rows(tmp_path, capsys):
    code = main(["sft", "configs/tiny_cpu.yaml", "sft.difficulty_cue=true", "optim.max_steps=1", "--output-dir",
                 str(tmp_path / "run")])  # fmt: skip
    assert code == 2 and "sft.difficulty_cue needs a `difficulty` column" in capsys.readouterr().out


def test_stage_and_recipe_keys_are_checked(tmp_path):
    from observe_r1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="stages\\[0\\].steps"):
        load_config(None, ["stages=[{steps: -1}]"])
    with pytest.raises(ConfigError, match="recipe"):
        load_config(None, ["stages=[{recipe: ppo}]"])
    with pytest.raises(ConfigError, match="per_objective keeps the terms apart"):
        load_config(None, ["reward.combine=per_objective", "reward.gate=observe_format"])
    with pytest.raises(ConfigError, match="rft.rounds"):
        load_config(None, ["rft.rounds=0"])
