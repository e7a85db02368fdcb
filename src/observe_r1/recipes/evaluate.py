"""`observe-r1 eval --model DIR --data FILE`: evaluate a checkpoint (training.evaluation.evaluate: greedy
accuracy overall and per level / skill, format rate, lengths, pass@k) and write its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from observe_r1.config import MultiTurnConfig, ToolsConfig
from observe_r1.data.dataset import load_samples
from observe_r1.data.prompts import system_prompt
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rewards import Rewarder
from observe_r1.rollout.base import RolloutBackend
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.multiturn import MultiTurnRollout
from observe_r1.tools.base import schema_of
from observe_r1.tools.builtin import make_tools
from observe_r1.training.checkpoint import MANIFEST, CheckpointError, verify
from observe_r1.training.evaluation import evaluate


def markdown_table(metrics: dict[str, float], title: str = "Evaluation") -> str:
    """The metrics as a markdown table: overall first, then per level and per skill."""
    lines = [f"## {title}", "", "| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        shown = (
            f"{value:.4f}" if isinstance(value, float) and value == value and key != "count" else f"{value:g}"
        )
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, metrics: dict[str, float], records: list[dict[str, Any]], title: str = "Evaluation"
) -> None:
    """OUT/eval.json (metrics and every response) and OUT/eval.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({"metrics": metrics, "records": records}, indent=1))
    (out / "eval.md").write_text(markdown_table(metrics, title))


def evaluate_checkpoint(
    model_dir: str | Path,
    data: list[str],
    system: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    pass_k: int = 0,
    limit: int = 0,
    max_prompt_length: int = 9216,
    on_batch=None,
    base_model: str | None = None,
    trust_remote_code: bool = False,
    format_term: str = "",
    tools: tuple[str, ...] = (),
    tool_layout: str = "code",
    vas: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Load a checkpoint and evaluate it on data files with the default rewards (accuracy + observe format).
    `system` None: the system prompt the checkpoint was trained with (its observe_r1.json), else "observe".
    A checkpoint of a training run (it has a manifest) is checked against its manifest first. The format
    rate is `format_term`'s ("" = think_format under the think preset, else observe_format); the metrics
    include accuracy_lenient (`evaluate`). With `tools`, responses are multi-turn and call them
    (`tool_layout`, default settings of `tools.*`: docs/tools.md). `vas`: the Visual Attention Score on the first
    `vas` items (training.evaluation)."""
    if (Path(model_dir) / MANIFEST).is_file():
        problem = verify(Path(model_dir))
        if problem:
            raise CheckpointError(f"{model_dir}: the checkpoint cannot be trusted: {problem}")
    encoder = ChatEncoder.from_pretrained(model_dir, trust_remote_code, max_prompt_length=max_prompt_length)
    preset = system or encoder.system_prompt or "observe"
    text = system_prompt(preset)
    format_term = format_term or ("think_format" if preset.startswith("think") else "observe_format")
    tools_cfg = ToolsConfig(names=list(tools))
    multi_turn = MultiTurnConfig(enabled=bool(tools), layout="chat" if tool_layout == "chat" else "code")
    if tools and tool_layout == "chat":
        encoder.tools = [schema_of(t) for t in make_tools(tools_cfg).values()]
    samples = load_samples(data, encoder, text)[: limit or None]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(str(model_dir), lora_base=base_model, trust_remote_code=trust_remote_code)
    model = model.to(device).eval()  # LoRA: merged onto its base
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with Rewarder([("accuracy", 1.0), (format_term, 0.5)]) as rewarder, amp:
        backend: RolloutBackend = HFRollout(model, encoder)
        if tools:
            backend = MultiTurnRollout(backend, encoder, make_tools(tools_cfg), multi_turn, tools_cfg)
        return evaluate(
            backend,
            encoder,
            samples,
            rewarder,
            text,
            max_new_tokens,
            batch_size,
            pass_k,
            on_batch=on_batch,
            lenient=True,
            vas=vas,
        )
