"""End-to-end GRPO runs of the tiny model on synthetic data (CPU, seconds each)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from observe_r1.config import load_config
from observe_r1.recipes.grpo import train
from observe_r1.training.checkpoint import RunState
from observe_r1.training.state import load_tree

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny_cpu.yaml"
# the CLI under torchrun with 2 processes (append the command and its arguments)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "observe_r1.cli"]

STEP_METRICS = [
    "reward/accuracy/mean", "reward/accuracy/rate_1", "reward/observe_format/mean", "reward/digits/mean",
    "reward/total/mean", "reward/errors", "reward/unparsed_gold", "reward/timeouts", "accuracy", "format_rate",
    "bonus/group_rate", "response/length_mean", "response/length_max", "response/truncated_rate",
    "difficulty/correct_0", "difficulty/correct_4", "advantage/zero_weight_groups", "advantage/zero_variance_groups",
    "actor/clip_fraction", "actor/approx_kl", "actor/kl_ref", "actor/entropy", "actor/grad_norm", "actor/loss",
    "actor/ratio_max", "optim/lr", "perf/tokens_per_s", "time/rollout", "time/reward", "time/old_logprob", "time/ref",
    "time/advantage", "time/update",
]  # fmt: skip


def overrides(shaping, out, *extra):
    terms = f"reward.terms=[{{name: accuracy}}, {{name: observe_format, weight: 0.5}}, {{name: '{shaping}:digits'}}]"
    return [terms, "algorithm.difficulty_weighting=false", f"logging.output_dir={out}", *extra]


def run(shaping, out, *extra):
    return train(load_config(TINY, overrides(shaping, out, *extra)))


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def weights(path):
    return load_file(Path(path) / "model.safetensors")


def state(path):
    return load_tree(Path(path) / "trainer_state")


def test_three_steps_train_log_and_checkpoint(shaping, tmp_path):
    out = run(shaping, tmp_path / "run")
    rows = metrics(out)
    steps = [r for r in rows if "actor/loss" in r]
    assert [r["step"] for r in steps] == [0, 1, 2]
    for r in steps:
        missing = [k for k in STEP_METRICS if k not in r]
        assert not missing, missing
        assert r["actor/loss"] is not None and abs(r["actor/loss"]) < 1e3
    assert "eval/accuracy" in rows[-1] and "eval/accuracy/level_1" in rows[-1]
    assert any(r["actor/grad_norm"] > 0 for r in steps)
    base, final = weights(out / "base-model"), weights(out / "checkpoints" / "step-000003")
    assert any(not torch.equal(base[k], final[k]) for k in base)  # parameters changed
    model = AutoModelForImageTextToText.from_pretrained(out / "checkpoints" / "step-000003")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        "step-000002",
        "step-000003",
    ]  # keep_last 2
    dumped = [json.loads(x) for x in (out / "rollouts" / "step-000001.jsonl").read_text().splitlines()]
    assert (
        len(dumped) == 16
        and {"question", "images", "response", "reward", "terms", "advantage"} <= dumped[0].keys()
    )
    assert any((out / "tensorboard").iterdir())


def actor(micro, model, encoder, optimizer, *extra):
    """The GRPO actor of one process, its mini-batch 8 sequences, with a scheduler that does nothing."""
    from accelerate import Accelerator

    from observe_r1.recipes.grpo import Actor, Plan

    cfg = load_config(TINY, ["algorithm.kl_mode=off", "optim.grad_clip=0", *extra])
    plan = Plan(
        world=1, prompts=2, responses=8, mini=8, micro=micro, steps=1, updates_per_step=1, positions=[0, 1]
    )
    return Actor(
        cfg, plan, Accelerator(cpu=True), encoder, model, optimizer, SimpleNamespace(step=lambda: None)
    )


def trajectory(rollout, sequence_advantages):
    """A trajectory with its sequence advantages set (the update reads only those of the scoring stage)."""
    from observe_r1.algos import Advantages
    from observe_r1.rollout.batch import Trajectory

    empty = torch.zeros(0)
    return Trajectory(
        [], [], [], rollout, None, advantages=Advantages(empty, empty, empty, empty, sequence_advantages)
    )


class GradRecorder:
    """An optimiser that keeps the gradients it is asked to apply."""

    def __init__(self, params):
        self.params, self.grads = list(params), None
        self.param_groups = [{"params": self.params}]

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_gradient_accumulation_1x8_equals_8x1_padded_or_packed(tiny_model_dir, encoder):
    """One micro-batch of 8 or 8 of 1, padded or packed (`model.packing`): the same optimiser step."""
    from observe_r1.models.policy import load_model
    from observe_r1.rollout.base import PromptBatch, SamplingParams
    from observe_r1.rollout.hf import HFRollout
    from tests.test_rollout import prompt

    model = load_model(str(tiny_model_dir))
    prompts = [
        prompt(encoder, "How many?"),
        prompt(encoder, "What is the sum of the numbers?", (0, 0, 200), 168),
    ]
    rollout = HFRollout(model, encoder).generate(
        PromptBatch(prompts, [0, 1], seed=0), SamplingParams(n=4, max_new_tokens=16)
    )
    rollout.lengths = torch.tensor([16, 3, 9, 12, 1, 16, 7, 5])  # responses of several lengths to pack
    rollout.completion_mask = (torch.arange(16)[None] < rollout.lengths[:, None]).long()
    mask = rollout.completion_mask.float()
    adv = torch.linspace(-1, 1, 8)[:, None] * mask
    grads = []
    for micro, packing in ((8, False), (1, False), (8, True), (3, True)):
        opt = GradRecorder(model.parameters())
        traj = trajectory(rollout, adv[:, 0])
        traj.mask, traj.token_advantages = mask, adv
        stats = actor(micro, model, encoder, opt, f"model.packing={str(packing).lower()}").update(
            traj, RunState()
        )
        grads.append(opt.grads)
        assert stats["actor/grad_norm"] > 0
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_on_policy_kl_in_reward_equals_a_separate_old_logprob_pass(tiny_model_dir, encoder):
    """On-policy, the KL penalty comes from the update's own forward pass: same gradient as computing the
    old log-probs in a pass of their own first."""
    from observe_r1.recipes.grpo import add_token_advantages
    from observe_r1.rollout.base import PromptBatch, SamplingParams
    from observe_r1.rollout.hf import HFRollout
    from tests.test_rollout import prompt

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    prompts = [prompt(encoder, "How many?"), prompt(encoder, "What is the sum?", (0, 0, 200), 168)]
    rollout = HFRollout(model, encoder).generate(
        PromptBatch(prompts, [0, 1], seed=0), SamplingParams(n=4, max_new_tokens=16)
    )
    kl = ["algorithm.kl_mode=reward", "algorithm.kl_coef=0.5"]
    old = actor(4, model, encoder, None, *kl).logprobs(model, trajectory(rollout, None))
    ref = old - 0.3 * torch.rand(old.shape, generator=torch.Generator().manual_seed(0))
    grads = []
    for old_logp in (old, None):
        opt = GradRecorder(model.parameters())
        a = actor(4, model, encoder, opt, *kl)
        traj = trajectory(rollout, torch.linspace(-1, 1, 8))
        traj.old_logp, traj.ref_logp = old_logp, ref
        add_token_advantages(a.cfg, traj, torch.device("cpu"))
        stats = a.update(traj, RunState())
        grads.append(opt.grads)
        assert old_logp is not None or stats["actor/kl_ref"] > 0  # on-policy, the update measures the KL
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def cli(out, shaping, *extra):
    return [sys.executable, "-m", "observe_r1.cli", "train", str(TINY), *overrides(shaping, out, *extra)]


def test_resume_after_sigkill_is_exact(shaping, tmp_path):
    six = [
        "optim.max_steps=6",
        "optim.mini_batch_size=8",
        "logging.dump_rollouts_every=0",
        "checkpoint.keep_last=10",
    ]
    straight = tmp_path / "straight"
    subprocess.run(cli(straight, shaping, *six), check=True, capture_output=True, cwd=ROOT)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(killed, shaping, *six), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before reaching step 3"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # not a clean exit
    proc.wait()
    assert not (killed / "checkpoints" / "step-000006").exists()
    subprocess.run(cli(killed, shaping, *six), check=True, capture_output=True, cwd=ROOT)  # resume: auto

    a, b = weights(straight / "checkpoints/step-000006"), weights(killed / "checkpoints/step-000006")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    sa, sb = state(straight / "checkpoints/step-000006"), state(killed / "checkpoints/step-000006")
    assert sa["sampler"] == sb["sampler"] and sa["step"] == sb["step"] == 6
    ma, mb = metrics(straight), metrics(killed)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]  # no step logged twice
    assert [r.get("reward/total/mean") for r in ma] == [r.get("reward/total/mean") for r in mb]


def test_process_share_gives_each_process_its_part_of_every_mini_batch():
    from observe_r1.recipes.grpo import process_share

    assert process_share(8, 4, 2, 0) == [0, 1, 4, 5] and process_share(8, 4, 2, 1) == [2, 3, 6, 7]
    assert process_share(8, 8, 2, 1) == [4, 5, 6, 7]  # one mini-batch: contiguous halves
    shares = [process_share(12, 6, 3, r) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(12))


def test_two_processes_equal_one(shaping, tmp_path):
    # 2 mini-batches x 2 PPO epochs per rollout step: 4 optimiser steps, each on the same sequences as with
    # 1 process. With the best checkpoint kept: only the main process evaluates, every process joins the save.
    common = ["optim.max_steps=2", "optim.mini_batch_size=8", "optim.ppo_epochs=2", "logging.dump_rollouts_every=0",
              "logging.eval_every=1", "checkpoint.best_metric=eval/accuracy"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli(one, shaping, *common), check=True, capture_output=True, cwd=ROOT)
    proc = subprocess.run(TORCHRUN + cli(two, shaping, *common)[3:], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    a, b = weights(one / "checkpoints/step-000002"), weights(two / "checkpoints/step-000002")
    base = weights(one / "base-model")
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    for run in (one, two):  # a random policy scores 0 at both evaluations: the first stays the best
        assert json.loads((run / "checkpoints/best/best.json").read_text())["step"] == 1


def test_lora_saves_adapters_and_merges(shaping, tmp_path):
    out = run(shaping, tmp_path / "lora", "model.lora_rank=4", "optim.max_steps=2", "checkpoint.merge_lora=true",
              "model.freeze_vision=true", "optim.lr=1e-2")  # fmt: skip
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "adapter_config.json").is_file()
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged")
    base = AutoModelForImageTextToText.from_pretrained(out / "base-model")
    changed = [n for (n, p), (_, q) in zip(merged.named_parameters(), base.named_parameters(), strict=True)
               if not torch.equal(p, q)]  # fmt: skip
    assert changed and all("visual" not in n for n in changed) and any("q_proj" in n for n in changed)


def test_lora_with_trained_vision_tower_resumes(shaping, tmp_path):
    out = tmp_path / "lora-resume"
    run(shaping, out, "model.lora_rank=4", "optim.max_steps=2", "optim.lr=1e-2", "checkpoint.merge_lora=true")
    adapter = load_file(out / "checkpoints/step-000002/adapter_model.safetensors")
    assert any(
        "visual" in k and "lora" not in k for k in adapter
    )  # the trained tower is saved with the adapters
    merged = weights(out / "merged")
    base = weights(out / "base-model")
    assert any(not torch.equal(merged[k], base[k]) for k in base if "visual" in k)
    run(shaping, out, "model.lora_rank=4", "optim.max_steps=3", "optim.lr=1e-2")  # resume: auto, from step 2
    assert [r["step"] for r in metrics(out) if "actor/loss" in r] == [0, 1, 2]
    later = load_file(out / "checkpoints/step-000003/adapter_model.safetensors")
    assert any(not torch.equal(adapter[k], later[k]) for k in adapter)


def test_text_only_prompts_mixed_with_images(shaping, tmp_path):
    from PIL import Image

    data = tmp_path / "mixed"
    data.mkdir()
    Image.new("RGB", (112, 112), (200, 30, 30)).save(data / "red.png")
    rows = [{"problem": "<image>How many red squares?", "answer": "1", "images": ["red.png"]},
            {"problem": "What is 2 + 3?", "answer": "5"}] * 4  # fmt: skip
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run(
        shaping, tmp_path / "run", f"data.train=[{data / 'train.jsonl'}]", "data.test=[]", "optim.max_steps=2"
    )
    assert len([r for r in metrics(out) if "actor/loss" in r]) == 2


def test_text_only_causal_lm_trains_and_reloads(shaping, tmp_path):
    from observe_r1.models.inputs import ChatEncoder, PromptError
    from observe_r1.models.policy import load_model
    from observe_r1.toy.tiny import build_tiny_lm

    model = build_tiny_lm(tmp_path / "lm")
    assert not (model / "preprocessor_config.json").exists()
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"What is {i} + 2?"}], "answer": str(i + 2)}
            for i in range(8)]  # fmt: skip
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run(shaping, tmp_path / "run", f"model.path={model}", f"data.train=[{tmp_path / 'text.jsonl'}]",
              f"data.test=[{tmp_path / 'text.jsonl'}]", "optim.max_steps=2", "optim.lr=1e-2")  # fmt: skip
    steps = [r for r in metrics(out) if "actor/loss" in r]
    assert len(steps) == 2 and "eval/accuracy" in metrics(out)[-1]
    base, final = weights(model), weights(out / "checkpoints/step-000002")
    assert any(not torch.equal(base[k], final[k]) for k in base)
    assert type(load_model(str(out / "checkpoints/step-000002"))).__name__ == "Qwen2ForCausalLM"
    # the checkpoint records the system prompt it was trained with, for `observe-r1 eval`
    assert ChatEncoder.from_pretrained(out / "checkpoints/step-000002").system_prompt == "observe"
    encoder = ChatEncoder.from_pretrained(model)
    assert encoder.system_prompt is None
    with pytest.raises(PromptError, match="sample x: .*text-only"):
        from PIL import Image

        encoder.encode([{"role": "user", "content": [{"type": "image"}]}], [Image.new("RGB", (56, 56))], "x")


def test_micro_batches_go_longest_first_within_each_mini_batch():
    from observe_r1.rollout.batch import micro_batches

    lengths = torch.tensor([3, 9, 1, 7, 5, 2, 8, 4])
    rollout = type("R", (), {"lengths": lengths, "__len__": lambda self: 8})()
    assert micro_batches(rollout, mini=4, micro=2) == [[[1, 3], [0, 2]], [[6, 4], [7, 5]]]


def test_frozen_vision_tower_does_not_move(shaping, tmp_path):
    out = run(shaping, tmp_path / "frozen", "model.freeze_vision=true", "optim.max_steps=2", "optim.lr=1e-2")
    base, final = weights(out / "base-model"), weights(out / "checkpoints/step-000002")
    assert all(torch.equal(base[k], final[k]) for k in base if "visual" in k)
    assert any(not torch.equal(base[k], final[k]) for k in base if "visual" not in k)


def test_variants_dynamic_sampling_kl_loss_entropy_masking(shaping, tmp_path):
    out = run(shaping, tmp_path / "variants", "optim.max_steps=2", "algorithm.dynamic_sampling=true",
              "algorithm.kl_mode=loss", "model.reference_dtype=bfloat16", "algorithm.kl_estimator=k3", "algorithm.entropy_coef=0.01",
              "algorithm.mask_truncated=true", "algorithm.estimator=rloo", "algorithm.loss_agg=seq_mean_token_sum_norm",
              "algorithm.clip_high=0.28", "algorithm.dual_clip=3", "model.gradient_checkpointing=true")  # fmt: skip
    steps = [r for r in metrics(out) if "actor/loss" in r]
    assert len(steps) == 2 and all(r["dynamic_sampling/tries"] >= 1 for r in steps)
    assert all(r["actor/kl_ref"] is not None for r in steps)


def test_non_finite_steps_stop_the_run_without_saving_them(shaping, tmp_path):
    with pytest.raises(
        RuntimeError, match=r"2 optimiser steps in a row had a non-finite .*\(last checkpoint: none\)"
    ):
        run(shaping, tmp_path / "nan", "optim.lr=1e30", "optim.grad_clip=0", "optim.max_steps=8",
            "optim.max_nonfinite_steps=2", "checkpoint.every=100")  # fmt: skip
    assert not any((tmp_path / "nan" / "checkpoints").glob("step-*"))  # the weights were not finite
    assert any(r.get("optim/skipped_steps", 0) > 0 for r in metrics(tmp_path / "nan"))


def test_online_sampler_state_survives_resume(shaping, tmp_path):
    """Resume from step 2 of a 4-step run (its later checkpoints deleted) == the straight 4-step run."""
    import shutil

    args = [
        "data.sampler=online",
        "optim.max_steps=4",
        "logging.dump_rollouts_every=0",
        "checkpoint.keep_last=10",
    ]
    straight = run(shaping, tmp_path / "straight", *args)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for step in (3, 4):
        shutil.rmtree(resumed / f"checkpoints/step-00000{step}")
    run(shaping, resumed, *args)
    a = state(straight / "checkpoints/step-000004")["sampler"]
    b = state(resumed / "checkpoints/step-000004")["sampler"]
    assert (
        a["mode"] == "online"
        and a["frontier"] == b["frontier"]
        and torch.equal(a["pass_rate"], b["pass_rate"])
    )
    assert torch.equal(a["gen"], b["gen"])
    wa, wb = weights(straight / "checkpoints/step-000004"), weights(resumed / "checkpoints/step-000004")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_best_checkpoint_is_the_best_evaluation_and_survives_resume(shaping, tmp_path, monkeypatch):
    from observe_r1.recipes import grpo

    # a random policy's evaluations do not move, so the evaluation is scripted: a score per step
    scores = iter([0.3, 0.5, 0.4, 0.5, 0.45, 0.2, 0.1])
    monkeypatch.setattr(grpo, "evaluate_on_main", lambda *args: {"eval/score": next(scores)})
    best = ["logging.eval_every=1", "checkpoint.every=1", "checkpoint.keep_last=10", "logging.dump_rollouts_every=0",
            "checkpoint.best_metric=eval/score"]  # fmt: skip
    out = run(shaping, tmp_path / "run", "optim.max_steps=4", *best)

    def best_is(step, value):
        record = json.loads((out / "checkpoints" / "best" / "best.json").read_text())
        assert record == {"metric": "eval/score", "value": value, "step": step}
        a, b = weights(out / "checkpoints" / "best"), weights(out / "checkpoints" / f"step-{step:06d}")
        assert all(torch.equal(a[k], b[k]) for k in a)
        saved = state(out / "checkpoints" / "best")
        last = saved["history"][-1]  # saved after its step was logged
        assert saved["step"] == step and last["step"] == step - 1 and last["eval/score"] == value

    best_is(2, 0.5)  # the later 0.5 is not better, so it does not replace it
    # resumed at step 4: the best so far comes back, so step 5's 0.45 does not replace step 2's 0.5
    run(shaping, tmp_path / "run", "optim.max_steps=7", *best)
    best_is(2, 0.5)
    assert [r["eval/score"] for r in metrics(out) if "eval/score" in r] == [
        0.3,
        0.5,
        0.4,
        0.5,
        0.45,
        0.2,
        0.1,
    ]
    assert (out / "checkpoints" / "step-000007").is_dir()


def test_best_checkpoint_needs_evaluations_and_a_logged_metric(shaping, tmp_path, synth_dir):
    from observe_r1.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.best_metric: needs logging.eval_every"):
        run(shaping, tmp_path / "a", "checkpoint.best_metric=eval/accuracy", "logging.eval_every=0")
    with pytest.raises(ConfigError, match="checkpoint.best_metric needs data.test"):
        run(shaping, tmp_path / "b", "checkpoint.best_metric=eval/accuracy", "logging.eval_every=1",
            f"data.train=[{synth_dir / 'train.jsonl'}]", "data.test=[]")  # fmt: skip
    with pytest.raises(ConfigError, match="logs no 'eval/acuracy'; it logs eval/accuracy"):
        run(shaping, tmp_path / "c", "checkpoint.best_metric=eval/acuracy", "logging.eval_every=1",
            "optim.max_steps=1")  # fmt: skip


@pytest.mark.parametrize("kind", ["gspo", "cispo"])
def test_the_peers_newer_objectives_train_and_log(kind, shaping, tmp_path):
    """GSPO and CISPO (algorithm.policy_loss), DAPO's overlong shaping: a run of each trains and logs them."""
    out = run(
        shaping,
        tmp_path / kind,
        f"algorithm.policy_loss={kind}",
        "algorithm.overlong_buffer=8",
        "optim.max_steps=2",
        "logging.eval_every=0",
        "data.test=[]",
    )
    rows = [r for r in metrics(out) if "actor/loss" in r]
    assert len(rows) == 2 and all(math.isfinite(r["actor/loss"]) and r["actor/grad_norm"] > 0 for r in rows)
    assert all(
        r["reward/overlong_penalty/mean"] <= 0 and 0 <= r["reward/overlong_penalty/rate"] <= 1 for r in rows
    )
    assert all(0 <= r["actor/clip_fraction"] <= 1 for r in rows)


def test_engine_tokens_outside_the_mismatch_band_get_no_gradient(tiny_model_dir, encoder):
    """algorithm.mismatch_band (MIS / IcePop): with every engine log-prob far from the trainer's, every token
    is masked, the gradient is zero and the masked share logged is 1; inside the band the update is the plain one."""
    from observe_r1.models.policy import load_model
    from observe_r1.rollout.base import PromptBatch, SamplingParams
    from observe_r1.rollout.hf import HFRollout
    from tests.test_rollout import prompt

    model = load_model(str(tiny_model_dir))
    prompts = [prompt(encoder, "How many?"), prompt(encoder, "What is the sum?", (0, 0, 200), 168)]
    rollout = HFRollout(model, encoder).generate(
        PromptBatch(prompts, [0, 1], seed=0), SamplingParams(n=4, max_new_tokens=8)
    )
    mask = rollout.completion_mask.float()
    adv = torch.linspace(-1, 1, 8)[:, None] * mask
    shares, norms = [], []
    for shift in (0.0, 5.0):  # the engine's log-probs: the trainer's own, or e^5 times off
        a = actor(8, model, encoder, GradRecorder(model.parameters()), "algorithm.mismatch_band=[0.5, 5]")
        traj = trajectory(rollout, adv[:, 0])
        traj.mask, traj.token_advantages = mask, adv
        traj.old_logp = a.logprobs(model, traj)
        rollout.logprobs = traj.old_logp.detach() - shift
        stats = a.update(traj, RunState())
        shares.append(stats["actor/mismatch_masked_share"])
        norms.append(stats["actor/grad_norm"])
    rollout.logprobs = None
    assert shares == [0.0, 1.0] and norms[0] > 0 and norms[1] == 0
