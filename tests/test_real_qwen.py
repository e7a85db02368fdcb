"""The real Qwen2.5-VL-3B-Instruct files (../shared/realcases/qwen2.5-vl-3b-instruct): a random-init model
with the real 3B architecture at 2 layers (real widths, vision tower and token ids), its real chat template,
and its image-processor config in both the current and the release form (`Qwen2_5_VLImageProcessor`)."""

import json
import shutil

import pytest
import torch
from PIL import Image

from observe_r1.cli import main
from observe_r1.data.prompts import OBSERVE, with_system_prompt
from observe_r1.models.inputs import ChatEncoder
from observe_r1.models.policy import load_model

REAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
            "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}  # fmt: skip


@pytest.fixture(scope="module")
def real(realcases):
    return realcases / "qwen2.5-vl-3b-instruct"


@pytest.fixture(scope="module")
def like_3b(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("like3b") / "model"
    assert (
        main(
            [
                "tiny-model",
                str(out),
                "--like",
                str(real / "config.json"),
                "--layers",
                "2",
                "--vision-layers",
                "2",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def model(like_3b):
    return load_model(str(like_3b)).eval()


@pytest.fixture(params=["preprocessor_config.json", "preprocessor_config.release.json"])
def encoder(request, like_3b, real, tmp_path):
    """The encoder of the 3B-like checkpoint with one of the two real image-processor files."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in like_3b.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    shutil.copy(real / request.param, folder / "preprocessor_config.json")
    return ChatEncoder.from_pretrained(folder)


def test_like_keeps_the_real_architecture(like_3b, real, model):
    got = json.loads((like_3b / "config.json").read_text())
    want = json.loads((real / "config.json").read_text())
    text, vision = got["text_config"], got["vision_config"]
    assert text["num_hidden_layers"] == 2 and vision["depth"] == 2 and vision["fullatt_block_indexes"] == [1]
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    ):
        assert text[key] == want[key], key
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_heads",
        "out_hidden_size",
        "patch_size",
        "window_size",
    ):
        assert vision[key] == want["vision_config"][key], key
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert got[key] == want[key], key
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert json.loads((like_3b / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]


def test_both_processor_forms_load_with_the_real_settings(encoder):
    assert type(encoder.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert (encoder.min_pixels, encoder.max_pixels, encoder.merge_size) == (3136, 12845056, 2)
    assert {t: encoder.tokenizer.convert_tokens_to_ids(t) for t in REAL_IDS} == REAL_IDS


def test_prompts_render_exactly_as_the_real_chat_template(encoder):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cats?"}]}
    assert encoder.render(with_system_prompt([user], OBSERVE)) == (
        f"<|im_start|>system\n{OBSERVE}<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many cats?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # without a system message the real template inserts Qwen's default one
    assert encoder.render([user]).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


@pytest.mark.parametrize("size", [(100, 80), (224, 56), (333, 500)])
def test_image_tokens_equal_the_features_the_model_computes(encoder, model, realcases, size):
    image = Image.open(realcases / "data" / "images" / "cats.jpg").convert("RGB").resize(size)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many cats?"}]}
    prompt = encoder.encode([user], [image], sample_id="cats")
    batch = encoder.collate([prompt])
    n_tokens = int((batch["input_ids"] == REAL_IDS["<|image_pad|>"]).sum())
    assert n_tokens == encoder.tokens_per_image(*size) == prompt.image_tokens[0]
    with torch.no_grad():
        features = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        rows = sum(f.shape[0] for f in features)
        logits = model(**batch).logits
    assert rows == n_tokens and features[0].shape[-1] == 2048
    assert logits.shape == (1, batch["input_ids"].shape[1], 151936) and torch.isfinite(logits).all()


def test_release_processor_form_is_unknown_to_transformers_alone(real, tmp_path):
    """Why the encoder maps the old name: AutoImageProcessor refuses it."""
    from transformers import AutoImageProcessor

    shutil.copy(real / "preprocessor_config.release.json", tmp_path / "preprocessor_config.json")
    with pytest.raises(ValueError, match="Unrecognized image processor"):
        AutoImageProcessor.from_pretrained(tmp_path, backend="pil")


@pytest.mark.parametrize("frames,size", [(4, (112, 84)), (7, (140, 112))])
def test_video_tokens_equal_the_features_and_positions_of_the_real_architecture(
    encoder, model, frames, size, tmp_path
):
    """A video through the real chat template and the real vision tower (2 blocks): `<|video_pad|>` tokens =
    the video features, and the logits are finite with Qwen2.5-VL's time positions (`second_per_grid_ts`)."""
    import numpy as np

    from observe_r1.data.video import VideoSampling, decode
    from observe_r1.toy.video import write_video

    clip = [np.full((size[1], size[0], 3), 20 * i, np.uint8) for i in range(frames)]
    write_video(tmp_path / "v.mp4", clip, fps=2)
    video = decode(str(tmp_path / "v.mp4"), VideoSampling(fps=2.0, min_frames=2))
    user = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}
    prompt = encoder.encode([user], [], sample_id="clip", videos=[video])
    batch = encoder.collate([prompt])
    n_tokens = int((batch["input_ids"] == REAL_IDS["<|video_pad|>"]).sum())
    assert n_tokens == encoder.tokens_per_video(len(video.frames), *size) == prompt.video_tokens[0]
    assert "second_per_grid_ts" in batch and int((batch["mm_token_type_ids"] == 2).sum()) == n_tokens
    with torch.no_grad():
        features = model.get_video_features(
            batch["pixel_values_videos"], batch["video_grid_thw"]
        ).pooler_output
        logits = model(**batch).logits
    assert sum(f.shape[0] for f in features) == n_tokens and torch.isfinite(logits).all()
