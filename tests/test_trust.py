"""Trust the run: hostile or unlucky inputs end in a clear error or a correct run, never in code execution,
silent wrong training or a lost checkpoint (issue 13). Each test failed on the code before the fix."""

import errno
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from observe_r1.cli import main
from observe_r1.config import ConfigError, load_config
from observe_r1.recipes.grpo import train
from observe_r1.rewards import RewardFunctionError, RewardTimeoutError
from observe_r1.training import checkpoint as ckpt
from tests.test_train import TINY, metrics, overrides, state, weights

FAST = ["logging.dump_rollouts_every=0", "optim.mini_batch_size=16", "checkpoint.keep_last=10"]


def run(shaping, out, *extra):
    return train(load_config(TINY, overrides(shaping, out, *FAST, *extra)))


@pytest.fixture(scope="module")
def four_steps(shaping, tmp_path_factory):
    """A straight 4-step run with every checkpoint kept."""
    return run(shaping, tmp_path_factory.mktemp("straight") / "run", "optim.max_steps=4")


def resumed_copy(src, dst, drop_after):
    """A copy of run `src` as if killed after step `drop_after`: later checkpoints and metrics removed."""
    shutil.copytree(src, dst)
    for p in (dst / "checkpoints").glob("step-*"):
        if int(p.name.split("-")[1]) > drop_after:
            shutil.rmtree(p)
    return dst


# ------------------------------------------------------------------ 1. no code execution


class Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def plant(path: Path, marker: Path) -> None:
    Payload.marker = str(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"step": 999999, "payload": Payload()}))


def test_a_planted_pickle_never_runs(shaping, four_steps, tmp_path, caplog):
    out = resumed_copy(four_steps, tmp_path / "run", drop_after=2)
    marker = tmp_path / "pwned"
    plant(out / "checkpoints" / "step-999999" / "trainer_state.pt", marker)
    plant(out / "checkpoints" / "step-000002" / "rng-rank0.pt", marker)
    plant(out / "checkpoints" / "step-000002" / "trainer_state.pt", marker)
    with caplog.at_level(logging.INFO):
        run(shaping, out, "optim.max_steps=4")  # resume: auto
    assert not marker.exists()
    assert "step-999999: it holds a pickled trainer_state.pt" in caplog.text
    assert "resumed from" in caplog.text and "step-000002" in caplog.text
    a, b = weights(four_steps / "checkpoints/step-000004"), weights(out / "checkpoints/step-000004")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resume was the real, exact one
    with pytest.raises(FileNotFoundError, match="pickle, never loaded"):
        run(shaping, out, "optim.max_steps=5", f"checkpoint.resume={out / 'checkpoints' / 'step-999999'}")
    assert not marker.exists()


def test_state_files_are_json_and_safetensors(four_steps):
    path = four_steps / "checkpoints" / "step-000004"
    names = {p.name for p in path.iterdir()}
    assert {"trainer_state.json", "trainer_state.safetensors", "rng-rank0.json", "manifest.json"} <= names
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    s = state(path)
    assert s["step"] == 4 and s["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert isinstance(next(iter(s["optimizer"]["state"])), int)  # parameter ids keep their type


# ------------------------------------------------------------------ 5. resuming with another config


def test_resume_with_a_changed_config_is_refused_then_allowed(shaping, four_steps, tmp_path):
    out = resumed_copy(four_steps, tmp_path / "run", drop_after=2)
    with pytest.raises(
        ConfigError, match=r"optim\.lr: 0\.0001 -> 0\.001(.|\n)*rollout\.temperature: 1\.0 -> 0\.7"
    ):
        run(shaping, out, "optim.max_steps=4", "optim.lr=1e-3", "rollout.temperature=0.7")
    run(shaping, out, "optim.max_steps=4", "optim.lr=1e-3", "checkpoint.allow_config_change=true")
    lrs = {r["step"]: r["optim/lr"] for r in metrics(out) if "optim/lr" in r}
    straight = {r["step"]: r["optim/lr"] for r in metrics(four_steps) if "optim/lr" in r}
    assert lrs[1] == straight[1] and lrs[2] > 5 * straight[2]  # the new lr applies (10x, on a new cosine)


# ------------------------------------------------------------------ 8. a damaged checkpoint falls back


DAMAGE = {
    "truncated weights": lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:999]
    ),
    "missing config": lambda p: (p / "config.json").unlink(),
    "garbage trainer state": lambda p: (p / "trainer_state.json").write_text("{garbage"),
    "missing rng": lambda p: (p / "rng-rank0.safetensors").unlink(),
    "no manifest": lambda p: (p / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(
    damage, shaping, four_steps, tmp_path, caplog
):
    out = resumed_copy(four_steps, tmp_path / "run", drop_after=3)
    DAMAGE[damage](out / "checkpoints" / "step-000003")
    with caplog.at_level(logging.WARNING):
        run(shaping, out, "optim.max_steps=4")
    if damage != "no manifest":  # without its manifest a checkpoint is incomplete: not even a candidate
        assert "step-000003 cannot be trusted" in caplog.text
    a, b = weights(four_steps / "checkpoints/step-000004"), weights(out / "checkpoints/step-000004")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from step 2, exactly


# ------------------------------------------------------------------ 9. non-finite weights


def test_non_finite_weights_in_a_checkpoint_are_refused_on_load(shaping, four_steps, tmp_path, caplog):
    out = resumed_copy(four_steps, tmp_path / "run", drop_after=3)
    path = out / "checkpoints" / "step-000003"
    tensors = load_file(path / "model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    manifest = json.loads(
        (path / "manifest.json").read_text()
    )  # a consistent manifest: only the values are bad
    manifest["files"]["model.safetensors"] = [(path / "model.safetensors").stat().st_size,
                                              ckpt._sha256(path / "model.safetensors")]  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        run(shaping, out, "optim.max_steps=4")
    assert "weight tensors are not finite" in caplog.text
    a, b = weights(four_steps / "checkpoints/step-000004"), weights(out / "checkpoints/step-000004")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_diverging_weights_are_never_saved_and_good_checkpoints_never_pruned(
    shaping, four_steps, tmp_path, monkeypatch
):
    out = resumed_copy(four_steps, tmp_path / "run", drop_after=2)
    real_step = torch.optim.AdamW.step

    def diverging_step(self, *args, **kwargs):  # the first update of the resumed run sends a weight to inf
        result = real_step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    with pytest.raises(ckpt.CheckpointError, match="step 3: not saving a checkpoint with non-finite weights"):
        run(shaping, out, "optim.max_steps=8", "checkpoint.keep_last=2")
    assert [p.name for p in ckpt.checkpoint_dirs(out)] == ["step-000001", "step-000002"]  # nothing pruned
    for p in ckpt.checkpoint_dirs(out):
        assert all(torch.isfinite(v).all() for v in weights(p).values()), p.name


def test_the_skip_guard_trips_at_the_configured_count(shaping, tmp_path, caplog):
    # two optimiser steps per rollout step (mini_batch_size 8): the guard counted per rollout step and
    # tripped one skipped step late
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="2 optimiser steps in a row"):
        train(load_config(TINY, overrides(shaping, tmp_path / "run", "optim.lr=1e30", "optim.grad_clip=0",
                                          "optim.max_nonfinite_steps=2", "optim.max_steps=8")))  # fmt: skip
    assert caplog.text.count("optimiser step skipped") == 2


# ------------------------------------------------------------------ 10. a used output directory


def test_a_used_output_directory_is_refused_unless_overwritten(shaping, tmp_path):
    out = run(shaping, tmp_path / "run", "optim.max_steps=3")
    with pytest.raises(ConfigError, match="holds a previous run .*checkpoint.resume=none"):
        run(shaping, out, "optim.max_steps=2", "checkpoint.resume=none")
    run(shaping, out, "optim.max_steps=2", "checkpoint.resume=none", "checkpoint.overwrite=true")
    assert [p.name for p in ckpt.checkpoint_dirs(out)] == ["step-000001", "step-000002"]
    assert [r["step"] for r in metrics(out) if "actor/loss" in r] == [0, 1]
    with pytest.raises(ConfigError, match="checkpoint.overwrite: needs checkpoint.resume=none"):
        load_config(TINY, ["checkpoint.overwrite=true"])


# ------------------------------------------------------------------ 11. a kill while building toy inputs


def test_a_half_built_tiny_model_or_dataset_is_never_reused(shaping, tmp_path, monkeypatch):
    from observe_r1.toy import synth, tiny

    real_model, real_data = tiny.build_tiny_vlm, synth.write_dataset

    def killed_model(out, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    def killed_data(out, train, test, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "train.jsonl").write_text("{}\n" * 3)
        (Path(out) / "test.jsonl").write_text("")
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(tiny, "build_tiny_vlm", killed_model)
    with pytest.raises(KeyboardInterrupt):
        run(shaping, out, "optim.max_steps=1")
    monkeypatch.setattr(tiny, "build_tiny_vlm", real_model)
    monkeypatch.setattr(synth, "write_dataset", killed_data)
    with pytest.raises(KeyboardInterrupt):
        run(shaping, out, "optim.max_steps=1")
    monkeypatch.setattr(synth, "write_dataset", real_data)
    run(shaping, out, "optim.max_steps=1")
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 64  # synth_train in tiny_cpu.yaml
    assert (out / "base-model" / "model.safetensors").is_file()


# ------------------------------------------------------------------ 12. best.json


@pytest.mark.parametrize("garbage", ["{oops", "{}", '{"metric": "eval/score", "value": "high", "step": 2}'])
def test_a_bad_best_json_is_recomputed_from_the_history(garbage, shaping, tmp_path, monkeypatch, caplog):
    from observe_r1.recipes import grpo

    scores = iter([0.3, 0.5, 0.4, 0.45])
    monkeypatch.setattr(grpo, "evaluate_on_main", lambda *args: {"eval/score": next(scores)})
    best = ["logging.eval_every=1", "checkpoint.best_metric=eval/score"]
    out = run(shaping, tmp_path / "run", "optim.max_steps=3", *best)
    (out / "checkpoints" / "best" / "best.json").write_text(garbage)
    with caplog.at_level(logging.WARNING):
        run(shaping, out, "optim.max_steps=4", *best)  # 0.45 at step 4 must not beat step 2's 0.5
    assert "best eval/score so far recomputed from the metrics history: 0.5 at step 2" in caplog.text
    assert (out / "checkpoints" / "best" / "best.json").read_text() == garbage  # not replaced by a worse step


def test_a_kill_while_replacing_best_leaves_the_old_one(shaping, tmp_path, monkeypatch):
    from observe_r1.recipes import grpo

    scores = iter([0.3, 0.5, 0.2])
    monkeypatch.setattr(grpo, "evaluate_on_main", lambda *args: {"eval/score": next(scores)})
    best = ["logging.eval_every=1", "checkpoint.best_metric=eval/score"]
    out = run(shaping, tmp_path / "run", "optim.max_steps=2", *best)
    root = out / "checkpoints"
    (root / "best").rename(root / ".old-best")  # killed between moving the old best aside and the rename
    shutil.copytree(root / "step-000001", root / ".tmp-best")
    run(shaping, out, "optim.max_steps=3", *best)
    assert json.loads((root / "best" / "best.json").read_text())["step"] == 2
    assert not (root / ".old-best").exists() and not (root / ".tmp-best").exists()


# ------------------------------------------------------------------ 13. full disk, read-only output


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "ENOSPC: No space left on device"),
                                        (errno.EROFS, "EROFS: Read-only file system")])  # fmt: skip
def test_a_full_disk_or_read_only_output_is_one_clear_line(code, text, shaping, tiny_model_dir, tmp_path,
                                                          monkeypatch, capsys):  # fmt: skip
    import transformers.modeling_utils as mu

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[1]))

    monkeypatch.setattr(mu, "safe_save_file", full)
    args = overrides(shaping, tmp_path / "run", "optim.max_steps=1", f"model.path={tiny_model_dir}")
    exit_code = main(["train", str(TINY), *args])
    out = capsys.readouterr().out
    assert exit_code == 2
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert "cannot write checkpoint" in line and "step-000001" in line and text in line
    assert "Traceback" not in out


# ------------------------------------------------------------------ 3, 4, 7. rewards


def reward_run(shaping, out, terms, *extra):
    args = [f"reward.terms={terms}", f"logging.output_dir={out}", *FAST, *extra]
    return train(load_config(TINY, args))


def test_a_dense_correct_term_gets_a_threshold_and_a_loud_warning(shaping, tmp_path, caplog):
    dense = f"[{{name: accuracy}}, {{name: '{shaping}:digits'}}]"
    with caplog.at_level(logging.WARNING):
        out = reward_run(shaping, tmp_path / "zero", dense, "reward.correct_term=digits", "optim.max_steps=3")
    steps = [r for r in metrics(out) if "actor/loss" in r]
    assert [r["advantage/zero_weight_streak"] for r in steps] == [1, 2, 3]
    assert all(r["advantage/weight_mean"] == 0 and r["actor/grad_norm"] == 0 for r in steps)
    assert "no gradient for 3 steps in a row" in caplog.text and "reward.correct_threshold" in caplog.text
    out = reward_run(shaping, tmp_path / "dense", dense, "reward.correct_term=digits", "optim.max_steps=2",
                     "reward.correct_threshold=0.02")  # fmt: skip
    steps = [r for r in metrics(out) if "actor/loss" in r]
    assert any(r["advantage/weight_mean"] > 0 for r in steps) and any(r["actor/grad_norm"] > 0 for r in steps)


def test_training_stops_when_a_term_fails_on_every_response(shaping, tmp_path):
    plugin = tmp_path / "trl_rewards.py"
    plugin.write_text("def accuracy_reward(completions, solution, **kwargs):\n"
                      "    return [float(c[0]['content'] == s) for c, s in zip(completions, solution)]\n")  # fmt: skip
    terms = f"[{{name: accuracy}}, {{name: '{plugin}:accuracy_reward'}}]"
    with pytest.raises(
        RewardFunctionError, match="reward term accuracy_reward raised on every one of the 16"
    ):
        reward_run(shaping, tmp_path / "run", terms, "optim.max_steps=2")


def test_training_stops_when_a_term_hangs_on_every_response(shaping, tmp_path):
    plugin = tmp_path / "slow.py"
    plugin.write_text("import time\n\ndef slow(completions, **kwargs):\n    time.sleep(1000)\n")
    terms = f"[{{name: accuracy}}, {{name: '{plugin}:slow'}}]"
    with pytest.raises(RewardTimeoutError, match="reward term slow took longer than reward.timeout_s=0.2 s"):
        reward_run(shaping, tmp_path / "run", terms, "optim.max_steps=2", "reward.timeout_s=0.2")
