"""`observe-r1 ladder build`: score a dataset with a model and write the NeuraLadder (spec section 6).

1. Optional easy filter: a model answers directly (no reasoning, greedy); items it gets right are dropped.
2. Difficulty and complexity: k sampled reasoning responses per item with the engine's rollout backend and
   rewards; difficulty = 1 - correct / k, complexity = mean response length in tokens.
3. Cleaning, ordering, proportions and neighbour mixing (`observe_r1.data.ladder`).
Scores are appended to OUT.scores.jsonl as each batch finishes, so an interrupted build resumes where it
stopped; each row carries the fingerprint of the model and settings that made it, so a build with another
model, k or sampling scores afresh instead of reusing them. Outputs: OUT (jsonl with `difficulty`, `complexity`, `level`; a row's original `level` column is
kept as `source_level`), OUT.review.jsonl (difficulty-1 items, for checking their gold answers),
OUT.summary.md (a table per stage) and OUT.png (the ladder figure).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from observe_r1.config import Config
from observe_r1.data.dataset import Columns, Sample, load_samples, to_native_row
from observe_r1.data.ladder import Item, Ladder, build_ladder, summary
from observe_r1.data.prompts import DIRECT, system_prompt
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model
from observe_r1.rewards import Rewarder
from observe_r1.rollout.base import SamplingParams
from observe_r1.rollout.hf import HFRollout
from observe_r1.rollout.multiturn import with_tools
from observe_r1.training.reward_models import model_terms
from observe_r1.training.runtime import autocast
from observe_r1.training.scoring import generate_and_score
from observe_r1.training.setup import load_encoder

log = logging.getLogger(__name__)

EASY_TOKENS = 64  # the easy filter's direct answers are at most this long


@dataclass
class LadderResult:
    ladder: Ladder
    out: Path
    easy_dropped: int


def build(
    cfg: Config, data: list[str], model: str, out: str | Path, on_batch: Callable[[int], None] | None = None
) -> LadderResult:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lc = cfg.ladder
    system = system_prompt(cfg.data.system_prompt)
    encoder = load_encoder(cfg, model)  # with the tools listed when multi-turn rollouts use the chat layout
    samples = load_samples(data, encoder, system, cfg.data.max_bad_row_fraction, Columns.of(cfg.data))
    easy = set()
    with Rewarder.from_config(cfg.reward, model_terms(cfg)) as rewarder:
        if lc.easy_model:
            easy = easy_filter(
                cfg, lc.easy_model, samples, rewarder, out.with_suffix(".easy.jsonl"), on_batch
            )
            log.info("easy filter: %d of %d items answered directly and dropped", len(easy), len(samples))
        todo = [(i, s) for i, s in enumerate(samples) if s.id not in easy]
        scores = score(
            cfg, model, encoder, todo, rewarder, system, out.with_suffix(".scores.jsonl"), on_batch
        )
    items = [Item(s, scores[s.id]["difficulty"], scores[s.id]["complexity"]) for _, s in todo]
    ladder = build_ladder(items, lc.own_share, lc.min_complexity, lc.proportions, cfg.seed, lc.keep_unsolved)
    write(ladder, out)
    return LadderResult(ladder, out, len(easy))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fingerprint(model_dir: str | Path, **settings: Any) -> str:
    """What a cached score depends on: the model (its folder and its files' sizes and modification times:
    retrained in place, it is another model) and the scoring settings. A short hash."""
    files = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(model_dir).iterdir() if f.is_file()
    )
    text = json.dumps({"model": str(Path(model_dir).resolve()), "files": files, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> dict[str, dict]:
    """The rows of a score cache made with `key` (the same model and settings), by item id. Rows of another
    key are left out and counted; an unreadable line (a build killed while writing) is skipped, named."""
    if not path.is_file():
        return {}
    rows, other, bad = {}, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not (isinstance(row, dict) and isinstance(row.get("id"), str)):
                raise ValueError("not a score row")
        except ValueError:
            bad.append(n)
            continue
        if row.get("key") == key:
            rows[row["id"]] = row
        else:
            other += 1
    if bad:
        log.warning(
            "%s: skipped unreadable line(s) %s (those items are scored again)",
            path,
            ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""),
        )
    if other:
        log.info("%s: %d cached score(s) were made with another model or settings; not used", path, other)
    return rows


def score(
    cfg, model_dir, encoder, todo: list[tuple[int, Sample]], rewarder, system, cache: Path, on_batch
) -> dict:
    """Difficulty and complexity of every item, from k sampled responses; resumes from `cache` (the rows
    made with this model and these settings)."""
    r = cfg.rollout
    key = fingerprint(
        model_dir,
        k=cfg.ladder.k,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_new_tokens=r.max_new_tokens,
        system=system,
        seed=cfg.seed,
        reward=dataclasses.asdict(cfg.reward),
        **(
            {"tools": dataclasses.asdict(cfg.tools), "multi_turn": dataclasses.asdict(r.multi_turn)}
            if r.multi_turn.enabled
            else {}
        ),
    )
    done = _cached(cache, key)
    pending = [(i, s) for i, s in todo if s.id not in done]
    if on_batch is not None and len(done):
        on_batch(len(todo) - len(pending))
    if pending:
        policy = load_model(model_dir, trust_remote_code=cfg.model.trust_remote_code).to(_device()).eval()
        backend = with_tools(
            cfg, HFRollout(policy, encoder), encoder
        )  # a tool-using policy is scored with them
        sampling = SamplingParams(
            cfg.ladder.k, r.temperature, r.top_p, r.top_k, r.max_new_tokens, chunk_size=r.chunk_size
        )
        with cache.open("a") as f, autocast(_device(), cfg.model.dtype, generation=True):
            for start in range(0, len(pending), cfg.ladder.batch_size):
                chunk = pending[start : start + cfg.ladder.batch_size]
                # group ids are the items' positions in the data, so scores do not depend on batching or resume
                got = generate_and_score(backend, encoder, rewarder, [s for _, s in chunk], [i for i, _ in chunk],
                                         sampling, system, cfg.seed)  # fmt: skip
                batch = got.samples
                correct = got.result.correct.view(len(batch), -1)
                lengths = got.rollout.model_lengths.view(len(batch), -1).float()
                for j, s in enumerate(batch):
                    row = {
                        "id": s.id,
                        "difficulty": 1.0 - float(correct[j].float().mean()),
                        "complexity": float(lengths[j].mean()),
                        "k": cfg.ladder.k,
                        "key": key,
                    }
                    done[s.id] = row
                    f.write(json.dumps(row) + "\n")
                f.flush()
                if on_batch is not None:
                    on_batch(len(batch))
    return done


def easy_filter(cfg, model_dir, samples: list[Sample], rewarder, cache: Path, on_batch) -> set[str]:
    """Ids of the items a model answers right without reasoning (greedy, a direct-answer system prompt)."""
    key = fingerprint(
        model_dir, system=DIRECT, max_new_tokens=EASY_TOKENS, reward=dataclasses.asdict(cfg.reward)
    )
    done = _cached(cache, key)
    pending = [s for s in samples if s.id not in done]
    if pending:
        trust = cfg.model.trust_remote_code
        encoder = ChatEncoder.from_pretrained(model_dir, trust, max_prompt_length=cfg.data.max_prompt_length)
        backend = HFRollout(load_model(model_dir, trust_remote_code=trust).to(_device()).eval(), encoder)
        sampling = SamplingParams(n=1, greedy=True, max_new_tokens=EASY_TOKENS)
        with cache.open("a") as f:
            for start in range(0, len(pending), cfg.ladder.batch_size):
                chunk = pending[start : start + cfg.ladder.batch_size]
                got = generate_and_score(backend, encoder, rewarder, chunk, list(range(len(chunk))), sampling, DIRECT,
                                         cfg.seed)  # fmt: skip
                for s, ok in zip(got.samples, got.result.correct.tolist(), strict=True):
                    done[s.id] = {"id": s.id, "correct": bool(ok), "key": key}
                    f.write(json.dumps(done[s.id]) + "\n")
    return {i for i, r in done.items() if r["correct"]}


def write(ladder: Ladder, out: Path) -> None:
    images = out.parent / (out.stem + "-images")

    def row(it: Item, level: int | None) -> dict:
        r = to_native_row(it.key, images)
        if "level" in r:
            r["source_level"] = r.pop("level")
        return {**r, "difficulty": it.difficulty, "complexity": round(it.complexity, 2),
                **({} if level is None else {"level": level})}  # fmt: skip

    out.write_text("".join(json.dumps(row(it, lv)) + "\n" for it, lv in ladder.rows))
    out.with_suffix(".review.jsonl").write_text(
        "".join(json.dumps(row(it, None)) + "\n" for it in ladder.review)
    )
    out.with_suffix(".summary.md").write_text(summary_table(ladder))
    figure(ladder, out.with_suffix(".png"))


def summary_table(ladder: Ladder) -> str:
    lines = [
        f"# NeuraLadder: {len(ladder.rows)} items in {len(ladder.stages)} stages; "
        f"{len(ladder.review)} for review (difficulty 1), {len(ladder.dropped)} dropped",
        "",
        "| stage | difficulty | items | share | own-level share | mean difficulty | mean complexity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary(ladder):
        lines.append(f"| {s['level']} | {s['difficulty']:.3f} | {s['size']} | {s['share']:.1%} | {s['own_share']:.1%} "
                     f"| {s['mean_difficulty']:.3f} | {s['mean_complexity']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def figure(ladder: Ladder, path: Path) -> None:
    """Left: difficulty vs complexity of every item, by stage. Middle: stage sizes. Right: the ramp."""
    fig = Figure(figsize=(15, 4))
    a, b, c = fig.subplots(1, 3)
    if ladder.rows:
        d = [it.difficulty for it, _ in ladder.rows]
        x = [it.complexity for it, _ in ladder.rows]
        lv = [level for _, level in ladder.rows]
        pts = a.scatter(x, d, c=lv, cmap="viridis", s=10, alpha=0.7)
        fig.colorbar(pts, ax=a, label="stage")
        stats = summary(ladder)
        b.bar([s["level"] for s in stats], [s["size"] for s in stats], color="tab:blue")
        window = max(1, len(d) // 50)
        ramp = [
            sum(d[max(0, i - window) : i + 1]) / len(d[max(0, i - window) : i + 1]) for i in range(len(d))
        ]
        c.plot(range(len(d)), ramp, color="tab:red")
    a.set(xlabel="complexity (mean response tokens)", ylabel="difficulty", title="items")
    b.set(xlabel="stage", ylabel="items", title="stage sizes")
    c.set(xlabel="position in the ladder", ylabel="difficulty (running mean)", title="the ramp")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
