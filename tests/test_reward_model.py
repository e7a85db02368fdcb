"""Reward models: the Bradley-Terry loss, preference rows in TRL's layouts, the score head (loadable with
AutoModelForSequenceClassification), `observe-r1 rm` learning a synthetic preference, and the `reward_model`
reward term scoring a step's responses with their images."""

import dataclasses
import json
import logging
import math
import random

import pytest
import torch
from PIL import Image
from transformers import AutoModelForSequenceClassification

from observe_r1.algos import bradley_terry_loss
from observe_r1.cli import main
from observe_r1.config import Config, ConfigError, RewardTerm, load_config
from observe_r1.data.dataset import parse_row
from observe_r1.data.preference import BAD_PAIR
from observe_r1.data.sources import RowError
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import add_score_head, load_model
from observe_r1.rewards import RewardBatch, Rewarder
from observe_r1.rollout.batch import sequence_inputs
from observe_r1.toy.sketch import long_form, write_pairs
from observe_r1.toy.tiny import build_tiny_lm
from observe_r1.training.reward_models import model_terms, score_responses
from observe_r1.training.scoring import responses_rollout


def test_bradley_terry_loss_matches_hand_computed_values():
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    loss, margin = bradley_terry_loss(chosen, rejected)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(loss, torch.tensor([-math.log(sig(1)), -math.log(sig(-2)), math.log(2)]))
    torch.testing.assert_close(margin, torch.tensor([1.0, -2.0, 0.0]))
    centred, _ = bradley_terry_loss(chosen, rejected, center_coef=0.1)
    torch.testing.assert_close(centred - loss, torch.tensor([0.1 * 1, 0.1 * 4, 0.1 * 36]))
    c, r = torch.tensor([0.5], requires_grad=True), torch.tensor([0.2], requires_grad=True)
    bradley_terry_loss(c, r)[0].sum().backward()  # d/dc -log sig(c - r) = -(1 - sig(c - r))
    torch.testing.assert_close(c.grad, torch.tensor([-(1 - sig(0.3))]))
    torch.testing.assert_close(r.grad, torch.tensor([1 - sig(0.3)]))


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {
            "prompt": [{"role": "user", "content": "What is 2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "5"}]}],
        },
        {
            "chosen": "What is 2+2? 4",
            "rejected": "What is 2+2? 5",
        },  # implicit prompt, TRL cuts before the space
        {
            "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
            "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
        },
    ],
)
def test_preference_rows_in_trl_layouts_need_no_gold(row, tmp_path):
    sample = parse_row(row, tmp_path, "r0")
    assert sample.question.strip() == "What is 2+2?" and sample.answer == ""
    assert sample.metadata["chosen"].strip() == "4" and sample.metadata["rejected"].strip() == "5"


def test_preference_rows_with_images_and_bad_pairs(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    row = {
        "images": ["a.png"],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        "chosen": "red",
        "rejected": "blue",
        "answer": "red",
    }
    sample = parse_row(row, tmp_path, "r0")
    assert sample.images == [str(tmp_path / "a.png")] and sample.answer == "red"
    for bad, why in [
        ({"prompt": "q", "chosen": "", "rejected": "x"}, "`chosen` is empty"),
        (
            {"prompt": "q", "chosen": 3, "rejected": "x"},
            "must be a string or a list of one assistant message",
        ),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "x"},
            "must be the assistant's",
        ),
        ({"chosen": "abc", "rejected": "xyz"}, "share no prompt"),
        ({"chosen": "abc", "rejected": ["x"]}, "both be strings or chat lists"),
    ]:
        with pytest.raises(RowError, match=why) as e:
            parse_row(bad, tmp_path, "r1")
        assert e.value.kind == BAD_PAIR


def test_score_head_folder_loads_with_auto_sequence_classification_and_scores_alike(tmp_path):
    lm = build_tiny_lm(tmp_path / "lm")
    model = add_score_head(load_model(str(lm)), seed=3).eval()
    encoder = ChatEncoder.from_pretrained(lm)
    model.config.pad_token_id = encoder.pad_token_id
    model.save_pretrained(tmp_path / "rm")
    encoder.save_pretrained(tmp_path / "rm")
    prompts = [
        encoder.encode([{"role": "user", "content": q}]) for q in ("How many?", "Which colour is the circle?")
    ]
    texts = ["<answer>3</answer>", "It is red.", "red, I think, after looking twice"]
    ours = score_responses(model, encoder, prompts, [0, 1, 1], texts, batch_size=3, dtype="float32")
    reloaded = load_model(str(tmp_path / "rm")).eval()
    torch.testing.assert_close(reloaded.score.weight, model.score.weight)
    assert score_responses(reloaded, encoder, prompts, [0, 1, 1], texts, 2, "float32") == pytest.approx(
        ours, abs=1e-5
    )
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert hf.config.num_labels == 1
    rollout = responses_rollout(prompts, [0, 1, 1], texts, encoder)
    for i in range(3):  # one sequence at a time: the prompt, then the response and its end token
        inputs = sequence_inputs(rollout, [i], encoder)
        ids = inputs["input_ids"][:, inputs["attention_mask"][0].bool()]
        with torch.no_grad():
            assert float(hf(input_ids=ids).logits[0, 0]) == pytest.approx(ours[i], abs=1e-5)


def rm_args(out, data, model):
    return [
        "rm",
        "configs/tiny_cpu.yaml",
        f"model.path={model}",
        f"data.train=[{data['train']}]",
        f"data.test=[{data['test']}]",
        "data.system_prompt=none",
        "optim.mini_batch_size=8",
        "optim.micro_batch_size=4",
        "optim.lr=1e-3",
        "optim.warmup_ratio=0",
        "logging.eval_every=10",
        "checkpoint.every=10",
        "--output-dir",
        str(out),
    ]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs"), train=96, test=40, seed=0)


def test_rm_learns_to_prefer_the_sketch_over_the_long_form_held_out(tmp_path, tiny_model_dir, pairs):
    out = tmp_path / "rm"
    assert main([*rm_args(out, pairs, tiny_model_dir), "optim.max_steps=30"]) == 0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["eval/pair_accuracy"] >= 0.9  # 40 held-out pairs the model never saw
    assert (
        metrics[-1]["rm/loss"] < metrics[0]["rm/loss"]
        and "# Reward model run" in (out / "report.md").read_text()
    )
    model = load_model(str(out / "model"))
    assert hasattr(model, "score") and model.config.num_labels == 1


def test_rm_with_lora_exports_a_merged_model_with_its_head(tmp_path, tiny_model_dir, pairs):
    out = tmp_path / "rm"
    assert main([*rm_args(out, pairs, tiny_model_dir), "optim.max_steps=2", "model.lora_rank=4"]) == 0
    assert (out / "model" / "config.json").is_file() and not (out / "model" / "adapter_config.json").exists()
    assert load_model(str(out / "model")).score.weight.abs().sum() > 0


def test_rm_refuses_data_without_pairs(tmp_path, tiny_model_dir, synth_dir, capsys):
    data = {"train": synth_dir / "train.jsonl", "test": synth_dir / "test.jsonl"}
    assert main([*rm_args(tmp_path / "rm", data, tiny_model_dir), "optim.max_steps=1"]) == 2
    assert "no row of data.train is a preference pair" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_dir, pairs):
    out = tmp_path_factory.mktemp("trained-rm")
    assert main([*rm_args(out, pairs, tiny_model_dir), "optim.max_steps=30", "logging.eval_every=0"]) == 0
    return out / "model"


def term_config(path, **kw):
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        reward=dataclasses.replace(
            cfg.reward,
            terms=[RewardTerm("accuracy", 1.0), RewardTerm("reward_model", 0.5)],
            reward_model=dataclasses.replace(cfg.reward.reward_model, path=str(path), **kw),
        ),
    )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, system_prompt="none")).validate()


def test_reward_model_term_scores_a_step_with_the_prompts_images(trained_rm, pairs, tmp_path):
    rows = [json.loads(x) for x in pairs["test"].read_text().splitlines()][:3]
    folder = pairs["test"].parent
    images = [[Image.open(folder / r["messages"][0]["content"][0]["image"]).convert("RGB")] for r in rows]
    prompts = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": r["messages"][0]["content"][1]["text"]},
                ],
            }
        ]
        for r in rows
    ]
    # two responses per prompt (a group): the sketch and the long form; the groups share the messages object
    texts = [t for r in rows for t in (r["chosen"], r["rejected"])]
    batch = RewardBatch(
        completions=texts,
        completion_ids=[[]] * 6,
        completion_lengths=[1] * 6,
        prompts=[p for p in prompts for _ in range(2)],
        images=[i for i in images for _ in range(2)],
        answers=[r["answer"] for r in rows for _ in range(2)],
        group_ids=[0, 0, 1, 1, 2, 2],
    )
    cfg = term_config(trained_rm, batch_size=4)
    with Rewarder.from_config(cfg.reward, model_terms(cfg)) as rewarder:
        result = rewarder(batch)
    scores = result.terms["reward_model"]
    assert (scores[0::2] > scores[1::2]).all()  # the sketch preferred in each group
    assert result.metrics["reward/reward_model/mean"] == pytest.approx(float(scores.mean()))
    torch.testing.assert_close(result.total, result.terms["accuracy"] + 0.5 * scores)
    # the same as scoring each sequence alone, with its image; another image gives another score
    model, encoder = load_model(str(trained_rm)).eval(), ChatEncoder.from_pretrained(trained_rm)
    alone = [
        score_responses(
            model, encoder, [encoder.encode(batch.prompts[i], batch.images[i])], [0], [texts[i]], 1
        )[0]
        for i in range(6)
    ]
    assert scores.tolist() == pytest.approx(alone, abs=0.05)  # bf16 autocast, batched vs alone
    other = [Image.new("RGB", images[0][0].size, "white")]
    assert score_responses(
        model, encoder, [encoder.encode(prompts[0], other)], [0], [texts[0]], 1, "float32"
    )[0] != pytest.approx(
        score_responses(
            model, encoder, [encoder.encode(prompts[0], images[0])], [0], [texts[0]], 1, "float32"
        )[0]
    )
    standardized = term_config(trained_rm, scores="standardized")
    with Rewarder.from_config(standardized.reward, model_terms(standardized)) as rewarder:
        z = rewarder(batch).terms["reward_model"]
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4) and float(z.std(unbiased=False)) == pytest.approx(
        1.0, abs=1e-3
    )
    bounded = term_config(trained_rm, scores="sigmoid")
    with Rewarder.from_config(bounded.reward, model_terms(bounded)) as rewarder:
        s = rewarder(batch).terms["reward_model"]
    assert s.tolist() == pytest.approx(torch.sigmoid(scores.double()).tolist(), abs=1e-5)


def test_reward_model_term_needs_a_path_and_a_score_head(tiny_model_dir):
    with pytest.raises(ConfigError, match="reward.reward_model.path"):
        term_config("")
    cfg = term_config(tiny_model_dir)
    batch = RewardBatch(["a"], [[]], [1], [[{"role": "user", "content": "q"}]], [[]], ["a"], [0])
    with (
        Rewarder.from_config(cfg.reward, model_terms(cfg)) as rewarder,
        pytest.raises(Exception, match="no score head"),
    ):
        rewarder(batch)


def test_grpo_trains_with_the_reward_model_term(tmp_path, trained_rm, synth_dir, tiny_model_dir):
    out = tmp_path / "grpo"
    args = [
        "train",
        "configs/tiny_cpu.yaml",
        f"model.path={tiny_model_dir}",
        f"data.train=[{synth_dir / 'train.jsonl'}]",
        "data.test=[]",
        "data.system_prompt=none",
        "optim.max_steps=1",
        f"reward.reward_model.path={trained_rm}",
        "reward.terms=[{name: accuracy, weight: 1.0}, {name: reward_model, weight: 1.0}]",
        "algorithm.difficulty_weighting=false",
        "--output-dir",
        str(out),
    ]
    assert main(args) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(row["reward/reward_model/mean"]) and row["reward/errors"] == 0


def test_long_form_keeps_the_answer_and_observation():
    from observe_r1.toy.synth import make_sample

    ref = make_sample(random.Random(0), (2,)).reference()
    long = long_form(ref, random.Random(0))
    think = lambda text: text.split("<think>")[1].split("</think>")[0]  # noqa: E731
    assert len(think(long)) > 2 * len(think(ref)) and long.split("</think>")[1] == ref.split("</think>")[1]
    assert long.split("<think>")[0] == ref.split("<think>")[0]
    assert load_config("configs/tiny_cpu.yaml").sft.rm_center_coef == 0.0


def test_loading_a_reward_model_reports_only_what_is_wrong(tmp_path):
    lm = build_tiny_lm(tmp_path / "lm")
    model = add_score_head(load_model(str(lm)))
    model.save_pretrained(tmp_path / "rm")
    model.save_pretrained(tmp_path / "rm2", state_dict={**model.state_dict(), "extra.weight": torch.zeros(1)})
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        load_model(str(lm))
        load_model(str(tmp_path / "rm"))  # the causal-LM class does not know `score.weight`: no report for it
        assert not [m for m in seen if "LOAD REPORT" in m]
        load_model(str(tmp_path / "rm2"))
        assert [m for m in seen if "LOAD REPORT" in m and "extra.weight" in m]  # anything else still is
    finally:
        logger.removeHandler(handler)


def test_rm_resumes_exactly(tmp_path, tiny_model_dir, pairs):
    from safetensors.torch import load_file

    args = [
        *rm_args(tmp_path / "whole", pairs, tiny_model_dir),
        "optim.schedule=constant",
        "logging.eval_every=0",
    ]
    assert main([*args, "optim.max_steps=4"]) == 0
    parted = [
        *rm_args(tmp_path / "parts", pairs, tiny_model_dir),
        "optim.schedule=constant",
        "logging.eval_every=0",
    ]
    assert main([*parted, "optim.max_steps=2"]) == 0
    assert main([*parted, "optim.max_steps=4"]) == 0  # resumes at step 2 (checkpoint.resume: auto)
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    parts = load_file(tmp_path / "parts" / "model" / "model.safetensors")
    assert whole.keys() == parts.keys() and "score.weight" in whole
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=0, atol=0)
