"""The Visual Attention Score against a hand computation: a 2-layer VLM whose query and key projections are
zero attends uniformly to every position it may see, so a response token at position p puts exactly
(image tokens before it) / (p + 1) of its attention on the image."""

import json

import pytest
import torch
from PIL import Image

from observe_r1.cli import main
from observe_r1.models.attention import visual_attention
from observe_r1.models.policy import load_model
from observe_r1.rollout.batch import sequence_inputs
from observe_r1.training.scoring import responses_rollout


def uniform_attention(model):
    for layer in model.model.language_model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
    return model.eval()


def test_vas_matches_the_hand_computation_on_uniform_attention(tiny_model_dir, encoder):
    model = uniform_attention(load_model(str(tiny_model_dir)))
    assert model.config.text_config.num_hidden_layers == 2
    image = Image.new("RGB", (56, 56), "red")
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    prompts = [
        encoder.encode(with_image, [image]),
        encoder.encode([{"role": "user", "content": "How many?"}]),
    ]
    rollout = responses_rollout(
        prompts, [0, 0, 1], ["<answer>2</answer>", "two", "<answer>3</answer>"], encoder
    )
    implementation = model.config._attn_implementation
    mass, tokens = visual_attention(
        model, sequence_inputs(rollout, [0, 1, 2], encoder), [encoder.image_token_id]
    )
    assert model.config._attn_implementation == implementation  # restored after the eager pass
    # by hand: the rows answering the image prompt; the text-only prompt's row has no VAS and is left out
    ids = prompts[0].input_ids
    images = ids.count(encoder.image_token_id)
    expected, count = 0.0, 0
    for row in (0, 1):
        for t in range(int(rollout.lengths[row])):
            expected += images / (len(ids) + t + 1)  # position len(ids) + t sees itself and all before it
            count += 1
    assert tokens == count and images > 0
    torch.testing.assert_close(mass, torch.full((2,), expected), rtol=1e-4, atol=1e-5)


def test_eval_reports_the_vas(tmp_path, tiny_model_dir, synth_dir):
    out = tmp_path / "eval"
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(synth_dir / "test.jsonl"),
        "--limit",
        "4",
        "--max-new-tokens",
        "8",
        "--vas",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    layers = [metrics[f"vision/attention_score/layer_{i}"] for i in range(2)]
    assert 0 < metrics["vision/attention_score"] < 1 and metrics["vision/attention_score"] == pytest.approx(
        sum(layers) / 2
    )
