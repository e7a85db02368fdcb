"""How many objects a counting policy lists in its `<observe>` block, against the gold count, step by step.

    python bench/count_listing.py --run runs/r4/b120/s0 [--ladder runs/demo_seeds4/seed0/ladder.jsonl] [--json]

Reads RUN/rollouts/step-N.jsonl (written every `logging.dump_rollouts_every` steps) and prints per dumped step:
the mean gold count, the mean number of objects listed (one per "... at (row,col)" line), the share of
responses listing too few and too many, and the rollout accuracy. With `--ladder`, also how the gold counts
are spread over each 40-item slice of the ladder (the order training consumes it in). docs/results.md,
fourth round, has the numbers.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def listed(response: str) -> int:
    return response.split("</observe>")[0].count(" at (")


def step_row(path: Path) -> dict:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    gold = [int(r["answer"]) for r in rows]
    seen = [listed(r["response"]) for r in rows]
    n = len(rows)
    return {
        "step": rows[0]["step"],
        "gold_mean": sum(gold) / n,
        "listed_mean": sum(seen) / n,
        "too_few": sum(s < g for s, g in zip(seen, gold, strict=True)) / n,
        "too_many": sum(s > g for s, g in zip(seen, gold, strict=True)) / n,
        "accuracy": sum(r["correct"] for r in rows) / n,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a GRPO output directory")
    p.add_argument("--ladder", help="the ladder jsonl the run trained on")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    steps = [step_row(f) for f in sorted((Path(args.run) / "rollouts").glob("step-*.jsonl"))]
    result: dict = {"steps": steps}
    if args.ladder:
        answers = [json.loads(x)["answer"] for x in Path(args.ladder).read_text().splitlines()]
        result["ladder_slices"] = [dict(Counter(answers[i : i + 40])) for i in range(0, len(answers), 40)]
    if args.json:
        print(json.dumps(result))
        return
    print(
        "| step | gold count (mean) | objects listed (mean) | listed too few | listed too many | rollout accuracy |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in steps:
        print(f"| {r['step']} | {r['gold_mean']:.2f} | {r['listed_mean']:.2f} | {r['too_few']:.0%} "
              f"| {r['too_many']:.0%} | {r['accuracy']:.0%} |")  # fmt: skip
    for i, counts in enumerate(result.get("ladder_slices", [])):
        print(f"ladder items {40 * i}-{40 * i + 39}: gold counts {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
