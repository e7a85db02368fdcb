"""Every recipe of configs/recipes runs for a few steps on this CPU with the tiny models (docs/recipes.md),
and shows the mechanism it is about in what it leaves behind."""

import json
from pathlib import Path

import pytest
import yaml

from observe_r1.cli import main

RECIPES = sorted(p for p in Path("configs/recipes").glob("*.yaml") if not p.name.startswith("_"))


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def steps(folder):
    return [r for r in rows(folder / "metrics.jsonl") if "perf/step_s" in r]


def config(folder):
    return yaml.safe_load((folder / "config.yaml").read_text())


def stage(out, k):
    return next(out.glob(f"stage-{k}-*"))


def check_observe_r1(out):
    assert {"format_rate", "bonus/group_rate", "advantage/weight_mean"} <= set(steps(out)[0])


def check_cold_start_rl(out):
    assert config(stage(out, 1))["model"]["path"] == str(stage(out, 0) / "model")


def check_ptst(out):
    for k, (n, length) in enumerate([(8, 16), (4, 24), (2, 32)]):
        assert config(stage(out, k))["rollout"]["n"] == n
        assert max(r["response/length_max"] for r in steps(stage(out, k))) <= length
    assert config(stage(out, 0))["reward"]["gate"] == "think_format"


def check_ton(out):
    assert (
        config(stage(out, 0))["sft"]["thought_dropout"] == 0.5
        and "reward/think_format_empty_ok/mean" in steps(stage(out, 1))[0]
    )


def check_metis_specs(out):
    assert rows(stage(out, 0) / "pairs.jsonl") and config(stage(out, 1))["model"]["path"] == str(
        stage(out, 0) / "model"
    )


def check_warm_up(out):
    assert (stage(out, 0) / "data" / "logic" / "train.jsonl").is_file()
    assert config(stage(out, 1))["data"]["synth_train"] == 100


def check_qwenlong_phases(out):
    carried = stage(out, 0) / "carry.jsonl"
    assert str(carried) in config(stage(out, 1))["data"]["train"]
    assert all(r["id"].endswith("@carried") and 0 < r["difficulty"] <= 1 for r in rows(carried))


def check_parallel_r1(out):
    weights = [{t["name"]: t["weight"] for t in config(stage(out, k))["reward"]["terms"]} for k in range(3)]
    assert [w["parallel_format"] for w in weights] == [0.5, 0.0, 0.5]


def check_plantain_gate(out):
    first = steps(out)[0]
    assert config(out)["reward"]["gate"] == "plantain_format"
    assert first["reward/plantain_format/mean"] > 0 or first["reward/total/mean"] == 0.0


def check_rejection_sampling(out):
    assert [r["step"] for r in rows(stage(out, 0) / "rounds.jsonl")] == [0, 1]


def check_start(out):
    (round_,) = rows(stage(out, 1) / "rounds.jsonl")
    assert round_["rft/kept"] > 0 and round_["rft/tool_used_rate"] > 0 and "rft/hints_per_response" in round_
    assert config(stage(out, 1))["rollout"]["multi_turn"]["hints"]


def check_shrink_perturb(out):
    assert config(out)["model"]["warm_start"] == "shrink_perturb" and len(steps(out)) == 2


def check_wsrl(out):
    assert "warmup/accuracy" in steps(out)[0] and "warmup/accuracy" not in steps(out)[1]


def check_continual_rewarm(out):
    first, second = steps(stage(out, 0)), steps(stage(out, 1))
    assert max(r["optim/lr"] for r in second) > first[-1]["optim/lr"]  # warmed up again


def check_video(out):
    rl = stage(out, 1)
    assert config(rl)["model"]["path"] == str(stage(out, 0) / "model")
    assert config(rl)["data"]["video_fps"] == 4.0 and list(rl.glob("data/video/videos/*.mp4"))
    assert steps(rl) and "reward/accuracy/mean" in steps(rl)[0]


def check_factum(out):
    columns = [config(stage(out, k))["sft"]["response_column"] for k in range(3)]
    assert columns == ["facts", "factum_format", "factum"]
    rl = stage(out, 3)
    assert config(rl)["reward"]["combine"] == "pareto" and "reward/factum_format/mean" in steps(rl)[0]


def check_sketchthinker(out):
    sketch, judge, rl = (stage(out, k) for k in range(3))
    assert config(sketch)["sft"]["sketch"] == "rules" and config(sketch)["sft"]["response_column"] == "long"
    assert (
        config(judge)["model"]["path"] == str(sketch / "model")
        and "eval/pair_accuracy" in rows(judge / "metrics.jsonl")[-1]
    )
    assert config(rl)["model"]["path"] == str(sketch / "model")  # the policy; the reward model scores
    assert config(rl)["reward"]["reward_model"]["path"] == str(judge / "model")
    assert "reward/reward_model/mean" in steps(rl)[0]


def check_avar(out):
    text, multimodal, rl = (stage(out, k) for k in range(3))
    assert config(text)["data"]["train"][0].endswith("logic/train.jsonl")  # text only first
    assert config(multimodal)["model"]["path"] == str(text / "model")
    for folder in (multimodal, rl):  # the VAS at every evaluation of the stages with images
        scores = [
            r["eval/vision/attention_score"]
            for r in rows(folder / "metrics.jsonl")
            if "eval/vision/attention_score" in r
        ]
        assert scores and all(0 < v < 1 for v in scores)


def check_multi_objective(out):
    assert (
        config(out)["reward"]["combine"] == "per_objective"
        and "reward/observe_mentions_colours/mean" in steps(out)[0]
    )


def test_every_recipe_has_a_check():
    assert sorted(p.stem for p in RECIPES) == sorted(
        k.removeprefix("check_") for k in globals() if k.startswith("check_")
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs(recipe, tmp_path):
    out = tmp_path / recipe.stem
    assert main(["train", str(recipe), "--output-dir", str(out)]) == 0
    globals()[f"check_{recipe.stem}"](out)


def test_the_worked_example_of_docs_recipes_runs(tmp_path):
    import re

    text = Path("docs/recipes.md").read_text()
    block = re.search(r"```yaml\n(base: _cpu.yaml.*?)```", text, re.S).group(1)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        block.replace("base: _cpu.yaml", f"base: {Path('configs/recipes/_cpu.yaml').resolve()}")
    )
    assert main(["train", str(recipe), "--output-dir", str(tmp_path / "run")]) == 0
    assert [p.name for p in sorted((tmp_path / "run").glob("stage-*"))] == [
        "stage-0-short",
        "stage-1-long",
        "stage-2-logic",
    ]
