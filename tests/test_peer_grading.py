"""Our accuracy reward against the verdicts of the peers' own test suites (../shared/realcases/grading).

Each row is graded as the content of `<answer>...</answer>`. A row the peer skips (`expected: null`, an
unparseable gold) agrees when we also do not read the gold as math, choice or yes/no (counted in
`reward/unparsed_gold`). The rows we differ on are listed here and in docs/rewards.md, each with its reason.
"""

import json
from pathlib import Path

import pytest

from observe_r1.rewards.accuracy import grade

# (pred, gold) of the rows where we differ on purpose; docs/rewards.md says why for each.
DIFFER_ON_PURPOSE = {
    ("Answer $ \n 9 \n $", "$9$"),
    ("Answer \\( \n 9 \n \\)", "$9$"),
    ("$p=5,q=2;p=7,q=2$", "\\boxed{ p = 5, q = 2 \\quad \\text{and} \\quad p = 7, q = 2}"),
    ("$\\boxed{2,3}$", "\\boxed{1} and and and or thus but \\boxed{2} and \\boxed{3}"),
    ("$\\boxed{1,2,3}$", "\\boxed{1} and and and or thus but \\boxed{2} and \\boxed{3}"),
    ("Answer: B\nAnswer: G", "B"),
    ("no, it was not", "no"),
}


def agrees(row) -> bool:
    g = grade(f"<answer>{row['pred']}</answer>", row["gold"])
    if row["expected"] is None:
        return g.unparsed_gold
    return g.score == row["expected"]


@pytest.fixture(scope="module")
def rows(realcases):
    return json.loads((realcases / "grading" / "peer_verdicts.json").read_text())


def test_agrees_with_the_peers_test_suites(rows):
    differ = {(r["pred"], r["gold"]) for r in rows if not agrees(r)}
    agreement = 1 - len(differ) / len(rows)
    assert len(rows) == 245
    assert differ == DIFFER_ON_PURPOSE, f"agreement {agreement:.1%}"
    assert agreement >= 0.97


def test_every_difference_is_documented():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "rewards.md").read_text()
    section = docs.split("### Where we differ from the peers")[1]
    for pred, _ in DIFFER_ON_PURPOSE:
        written = json.dumps(pred)[1:-1].replace("\\\\", "\\")  # newlines as \n, LaTeX as is
        assert f"`{written}`" in section, pred
