"""Reward functions written for TRL, EasyR1 and verl, each in its framework's own style, run unchanged
through `reward.terms[].signature` (observe_r1.rewards.signatures)."""

import pytest

from observe_r1.config import RewardTerm, load_config
from observe_r1.rewards import RewardBatch, Rewarder, RewardFunctionError

# Peer-style reward functions, written as their users write them.
TRL = """
def accuracy_reward(completions, solution, **kwargs):  # open-r1 / TRL: conversational completions
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if c.split("<answer>")[-1].split("</answer>")[0].strip() == s else 0.0
            for c, s in zip(contents, solution)]

def think_format_reward(completions, **kwargs):
    return [1.0 if completion[0]["content"].startswith("<think>") else 0.0 for completion in completions]

def sees_prompt(prompts, completions, trainer_state, **kwargs):
    return [float(p[-1]["role"] == "user" and trainer_state is None) for p in prompts]
"""

EASYR1 = """
import re

def compute_score(reward_inputs, format_weight=0.1):  # EasyR1 examples/reward_function/math.py style
    if not isinstance(reward_inputs, list):
        raise ValueError("Please use `reward_type=batch` for math reward function.")
    scores = []
    for reward_input in reward_inputs:
        response = reward_input["response"]
        format_score = 1.0 if re.fullmatch(r"<think>.*</think>.*<answer>.*</answer>", response, re.S) else 0.0
        answer = re.search(r"<answer>(.*)</answer>", response, re.S)
        accuracy = 1.0 if answer and answer.group(1).strip() == reward_input["ground_truth"] else 0.0
        scores.append({"overall": (1 - format_weight) * accuracy + format_weight * format_score,
                       "format": format_score, "accuracy": accuracy})
    return scores
"""

EASYR1_SEQUENTIAL = """
REWARD_NAME = "r1v"
REWARD_TYPE = "sequential"

def compute_score(reward_input):
    ok = reward_input["response"].endswith(reward_input["ground_truth"] + "</answer>")
    return {"overall": float(ok), "length": float(reward_input["response_length"])}
"""

VERL = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):  # verl's custom_reward_function
    assert data_source == "geo3k" and extra_info["split"] == "train"
    return float(solution_str.endswith(f"<answer>{ground_truth}</answer>"))

def dapo_style(data_source, solution_str, ground_truth, extra_info=None):
    ok = solution_str.endswith(f"<answer>{ground_truth}</answer>")
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": solution_str[-20:]}

def old_style(data_source, solution_str, ground_truth):  # verl before extra_info
    return 1 if ground_truth in solution_str else 0
"""

RIGHT = "<think>count</think><answer>4</answer>"
WRONG = "<think>count</think><answer>5</answer>"
UNFORMATTED = "<answer>4</answer>"


@pytest.fixture
def peers(tmp_path):
    for name, text in [("trl_rewards", TRL), ("easyr1_math", EASYR1), ("easyr1_r1v", EASYR1_SEQUENTIAL),
                       ("verl_reward", VERL)]:  # fmt: skip
        (tmp_path / f"{name}.py").write_text(text)
    return tmp_path


def batch(completions, **columns):
    n = len(completions)
    return RewardBatch(
        completions=completions,
        completion_ids=[[1, 2, 3]] * n,
        completion_lengths=[len(c) for c in completions],
        prompts=[[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many?"}]}]]
        * n,
        images=[[]] * n,
        answers=["4"] * n,
        group_ids=[0] * n,
        columns=columns,
    )


def term(peers, ref, signature, weight=1.0, score_key=""):
    file, fn = ref.split(":")
    return RewardTerm(f"{peers / file}.py:{fn}", weight, signature, score_key)


@pytest.mark.parametrize("workers", [0, 2])
def test_trl_functions_get_conversational_completions_and_columns(peers, workers):
    terms = [RewardTerm("accuracy"), term(peers, "trl_rewards:accuracy_reward", "trl"),
             term(peers, "trl_rewards:think_format_reward", "trl"), term(peers, "trl_rewards:sees_prompt", "trl")]  # fmt: skip
    with Rewarder(terms, workers=workers) as r:
        out = r(batch([RIGHT, WRONG, UNFORMATTED], solution=["4"] * 3))
    assert out.terms["accuracy_reward"].tolist() == [1.0, 0.0, 1.0]
    assert out.terms["think_format_reward"].tolist() == [1.0, 1.0, 0.0]
    assert out.terms["sees_prompt"].tolist() == [1.0] * 3


def test_trl_functions_fail_loudly_under_the_native_signature(peers):
    """Today's finding: run natively, `completion[0]["content"]` raises on every sample -> the run stops."""
    with pytest.raises(RewardFunctionError, match="raised on every one"):
        Rewarder(
            [RewardTerm("accuracy"), term(peers, "trl_rewards:think_format_reward", "native")], workers=0
        )(batch([RIGHT, WRONG]))


def test_easyr1_batch_scores_overall_and_logs_the_other_keys(peers):
    r = Rewarder([term(peers, "easyr1_math:compute_score", "easyr1")], correct_term="compute_score",
                 correct_threshold=0.9, workers=0)  # fmt: skip
    out = r(batch([RIGHT, WRONG, UNFORMATTED]))
    assert out.terms["compute_score"].tolist() == pytest.approx([1.0, 0.1, 0.9])  # overall, not the sum
    assert out.correct.tolist() == [True, False, True]
    assert out.metrics["reward/compute_score/accuracy/mean"] == pytest.approx(2 / 3)
    assert out.metrics["reward/compute_score/format/mean"] == pytest.approx(2 / 3)


def test_easyr1_function_under_the_native_signature_stops_the_run(peers):
    r = Rewarder(
        [term(peers, "easyr1_math:compute_score", "native")], correct_term="compute_score", workers=0
    )
    with pytest.raises(RewardFunctionError, match="raised on every one"):  # it wants one list, gets kwargs
        r(batch([RIGHT]))


def test_a_native_dict_is_summed_unless_a_score_key_is_set(tmp_path):
    (tmp_path / "mine.py").write_text(
        "def parts(completions, **kw):\n"
        "    return [{'overall': 0.9, 'format': 1.0, 'accuracy': 1.0} for _ in completions]\n"
    )
    ref = f"{tmp_path}/mine.py:parts"
    summed = Rewarder([RewardTerm(ref)], correct_term="parts", workers=0)(batch([RIGHT]))
    assert summed.terms["parts"].tolist() == [pytest.approx(2.9)]  # the native rule: sub-scores add up
    keyed = Rewarder([RewardTerm(ref, score_key="overall")], correct_term="parts", workers=0)(batch([RIGHT]))
    assert keyed.terms["parts"].tolist() == [pytest.approx(0.9)]
    assert keyed.metrics["reward/parts/format/mean"] == 1.0


def test_score_key_picks_another_key(peers):
    r = Rewarder([term(peers, "easyr1_math:compute_score", "easyr1", score_key="accuracy")],
                 correct_term="compute_score", workers=0)  # fmt: skip
    assert r(batch([RIGHT, UNFORMATTED])).terms["compute_score"].tolist() == [1.0, 1.0]
    r = Rewarder([term(peers, "easyr1_math:compute_score", "easyr1", score_key="total")],
                 correct_term="compute_score", workers=0)  # fmt: skip
    with pytest.raises(RewardFunctionError, match="without its score key 'total'.*accuracy"):
        r(batch([RIGHT]))


def test_easyr1_sequential_module_is_called_per_response(peers):
    r = Rewarder([term(peers, "easyr1_r1v:compute_score", "easyr1")], correct_term="compute_score", workers=2)
    with r:
        out = r(batch([RIGHT, WRONG]))
    assert out.terms["compute_score"].tolist() == [1.0, 0.0]
    assert out.metrics["reward/compute_score/length/mean"] == len(RIGHT)


def test_verl_functions_get_data_source_and_extra_info(peers):
    terms = [term(peers, "verl_reward:compute_score", "verl"), term(peers, "verl_reward:dapo_style", "verl"),
             term(peers, "verl_reward:old_style", "verl")]  # fmt: skip
    r = Rewarder(terms, correct_term="compute_score", workers=0)
    out = r(batch([RIGHT, WRONG], data_source=["geo3k"] * 2, extra_info=[{"split": "train", "index": 0}] * 2))
    assert out.terms["compute_score"].tolist() == [1.0, 0.0]
    assert out.terms["dapo_style"].tolist() == [1.0, -1.0]  # `score`; `acc` logged, `pred` (a string) dropped
    assert out.metrics["reward/dapo_style/acc/mean"] == 0.5
    assert out.terms["old_style"].tolist() == [1.0, 0.0]


def test_signature_from_yaml(peers):
    cfg = load_config(None, [f"reward.terms=[{{name: accuracy}}, {{name: '{peers}/verl_reward.py:old_style', "
                             "signature: verl, weight: 0.5}]"])  # fmt: skip
    assert cfg.reward.terms[1].signature == "verl"
    out = Rewarder.from_config(cfg.reward)(batch([RIGHT]))
    assert out.total.tolist() == [1.5]
    with pytest.raises(ValueError, match="signature"):
        load_config(None, ["reward.terms=[{name: accuracy, signature: openrlhf}]"])


def test_verl_and_trl_rows_reach_their_functions_with_their_own_columns(peers, realcases):
    """Real verl and TRL files: `data_source` / `extra_info` and `solution` reach the functions as columns."""
    import torch

    from observe_r1.data.dataset import load_dataset
    from observe_r1.rollout.base import PromptBatch, Rollout
    from observe_r1.training.scoring import reward_batch

    def score(file, ref, signature, text):
        samples = load_dataset(realcases / "data" / file, check_image_files=False).samples[:1]
        rollout = Rollout.of(PromptBatch([None], [0]), 2, torch.ones(2, 3, dtype=torch.long),  # type: ignore[list-item]
                             torch.tensor([3, 3]), torch.tensor([False, False]), text, 0)  # fmt: skip
        batch = reward_batch(rollout, samples, [samples[0].messages], [[]])
        return Rewarder([term(peers, ref, signature)], correct_term=ref.split(":")[1], workers=0)(batch)

    (peers / "geo.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    assert data_source == 'hiyouga/geometry3k' and extra_info['split'] == 'train'\n"
        "    return float(solution_str.endswith(f'<answer>{ground_truth}</answer>'))\n"
    )
    out = score(
        "verl_geo3k.parquet", "geo:compute_score", "verl", ["<answer>3</answer>", "<answer>4</answer>"]
    )
    assert out.terms["compute_score"].tolist() == [1.0, 0.0]
    out = score("trl_grpo_vlm.parquet", "trl_rewards:accuracy_reward", "trl",
                ["<answer>$60^\\circ$</answer>", "<answer>60</answer>"])  # fmt: skip
    assert out.terms["accuracy_reward"].tolist() == [1.0, 0.0]
