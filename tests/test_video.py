"""Video input end to end: decoding with PyAV (formats, sampling, seeking, bad files), rows with videos in the
peers' layouts and `data check`, the video inputs of Qwen2-VL / Qwen2.5-VL / Qwen3-VL (patch layout, token
counts, 3D rope positions against a hand computation), and mixed image/video/text batches through the model."""

import json
import random
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from observe_r1.data.dataset import (
    IMAGE_COUNT,
    UNREADABLE_VIDEO,
    VIDEO_TOO_LONG,
    Columns,
    load_dataset,
    to_native_row,
)
from observe_r1.data.video import (
    Video,
    VideoError,
    VideoSampling,
    decode,
    frame_indices,
    probe,
    sampled_count,
)
from observe_r1.models.inputs import ChatEncoder, PromptError
from observe_r1.models.policy import completion_logprobs, load_model
from observe_r1.models.video import VideoTiming, pair_frames
from observe_r1.toy import video as toy_video
from observe_r1.toy.video import write_video


def ramp(n: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """n frames whose red channel is 7 x the frame index (which frame was sampled can be read back)."""
    frames = []
    for i in range(n):
        a = np.zeros((height, width, 3), np.uint8)
        a[:, :, 0] = 7 * i % 256
        frames.append(a)
    return frames


def red(image: Image.Image) -> int:
    return image.getpixel((image.width // 2, image.height // 2))[0]


@pytest.mark.parametrize(
    "name,codec",
    [
        ("a.mp4", "libx264"),
        ("a.webm", "libvpx-vp9"),
        ("a.avi", "mpeg4"),
        ("a.mov", "mjpeg"),
        ("a.gif", "gif"),
    ],
)
def test_formats_decode_to_the_sampled_frames(tmp_path, name, codec):
    """35 frames at 10 fps sampled at 2 fps: 3.5 s -> 7 -> 6 frames (even), spread by linspace over the indices,
    the right frames whatever the container."""
    write_video(tmp_path / name, ramp(35), fps=10, codec=codec)
    info = probe(str(tmp_path / name))
    assert (info.frames, info.fps, info.width, info.height) == (35, 10.0, 64, 48)
    video = decode(str(tmp_path / name), VideoSampling(fps=2.0, min_frames=4, max_frames=16))
    wanted = np.linspace(0, 34, 6).round().astype(int)
    assert len(video.frames) == 6 and video.frames[0].size == (64, 48)
    assert video.timestamps == pytest.approx(list(wanted / 10), abs=1e-6)
    tolerance = 30 if codec == "gif" else 12  # lossy codecs; gif: 8 levels of red (rgb8)
    assert [red(f) for f in video.frames] == pytest.approx(list(7 * wanted), abs=tolerance)
    assert video.fps == pytest.approx(6 / 35 * 10)


def test_sampling_rules():
    s = VideoSampling(fps=2.0, min_frames=4, max_frames=16)
    assert sampled_count(60, 30.0, s) == 4  # 2 s at 2 fps
    assert sampled_count(300, 30.0, s) == 16  # 10 s: 20, at most 16
    assert sampled_count(35, 10.0, s) == 6  # 7 -> even
    assert sampled_count(3, 10.0, s) == 2  # fewer frames than min_frames: all of them, even
    assert sampled_count(1, 10.0, s) == 2  # one frame: repeated
    assert frame_indices(5, s) == [0, 1, 2, 3, 4, 4]  # a frame list: all, the last repeated to pair
    assert frame_indices(40, s) == list(np.linspace(0, 39, 16).round().astype(int))


def test_a_long_video_costs_its_sampled_frames_not_its_length(tmp_path):
    """A 10-minute video (6,000 frames at 10 fps): 16 frames reached by seeking, in well under a second."""
    frames = ramp(1)
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(6000):
            c.mux(stream.encode(av.VideoFrame.from_ndarray(frames[0], format="rgb24")))
        c.mux(stream.encode())
    started = time.perf_counter()
    video = decode(str(path), VideoSampling(max_frames=16, max_seconds=0))
    assert len(video.frames) == 16 and video.timestamps[-1] == pytest.approx(599.9, abs=0.2)
    assert time.perf_counter() - started < 5
    with pytest.raises(VideoError, match="video_max_seconds=300"):
        decode(str(path), VideoSampling(max_seconds=300))


def test_bad_videos_are_clear_errors(tmp_path):
    write_video(tmp_path / "ok.mp4", ramp(10))
    data = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "codec.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))  # a codec FFmpeg does not know
    (tmp_path / "text.mp4").write_text("not a video")
    with av.open(str(tmp_path / "zero.mkv"), "w") as c:  # a header, no frames
        stream = c.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    expected = {"truncated.mp4": "cannot read", "codec.mp4": "no decoder", "text.mp4": "cannot read",
                "zero.mkv": "cannot read|zero frames", "missing.mp4": "not found"}  # fmt: skip
    for name, message in expected.items():
        with pytest.raises(VideoError, match=message.replace("cannot read", "FFmpeg can read")):
            decode(str(tmp_path / name), VideoSampling())


def test_rows_with_videos_in_each_layout_and_data_check(tmp_path):
    write_video(tmp_path / "clip.mp4", ramp(12), fps=4)
    for i, frame in enumerate(ramp(5)):
        Image.fromarray(frame).save(tmp_path / f"f{i}.png")
    (tmp_path / "bad.mp4").write_text("garbage")
    long = tmp_path / "long.mp4"
    write_video(long, ramp(50), fps=1)  # 50 s
    frames = [f"f{i}.png" for i in range(5)]
    rows = [
        {"id": "native", "messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                                                   {"type": "text", "text": "which way?"}]}], "answer": "left"},
        {"id": "listed", "messages": [{"role": "user", "content": "which way?"}], "videos": ["clip.mp4"], "answer": "1"},
        {"id": "easyr1", "problem": "<video> then <image> which way?", "videos": ["clip.mp4"], "images": ["f0.png"], "answer": "1"},
        {"id": "verl", "prompt": [{"role": "user", "content": "<video>which?"}], "videos": [frames],
         "reward_model": {"ground_truth": "2"}},
        {"id": "frames", "messages": [{"role": "user", "content": [{"type": "video", "video": frames},
                                                                   {"type": "text", "text": "q"}]}], "answer": "3"},
        {"id": "corrupt", "problem": "<video> q", "videos": ["bad.mp4"], "answer": "1"},
        {"id": "too-long", "problem": "<video> q", "videos": ["long.mp4"], "answer": "1"},
        {"id": "missing", "problem": "<video> q", "videos": ["nope.mp4"], "answer": "1"},
        {"id": "count", "problem": "<video> <video> q", "videos": ["clip.mp4"], "answer": "1"},
        {"id": "frame-missing", "problem": "<video> q", "videos": [["f0.png", "gone.png"]], "answer": "1"},
    ]  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = load_dataset(str(path), video=VideoSampling(fps=2.0, max_seconds=30))
    good = {s.id: s for s in result.samples}
    assert set(good) == {"native", "listed", "easyr1", "verl", "frames"}
    kinds = {p.sample_id: (p.kind, p.line) for p in result.problems}
    assert kinds == {"corrupt": (UNREADABLE_VIDEO, 6), "too-long": (VIDEO_TOO_LONG, 7), "missing": (UNREADABLE_VIDEO, 8),
                     "count": (IMAGE_COUNT, 9), "frame-missing": ("missing_image", 10)}  # fmt: skip
    assert good["native"].videos == [str(tmp_path / "clip.mp4")] and good["native"].video_shapes == [
        (6, 64, 48)
    ]
    assert good["easyr1"].messages[0]["content"][0] == {"type": "video"}
    assert good["easyr1"].messages[0]["content"][2] == {"type": "image"} and len(good["easyr1"].images) == 1
    assert good["listed"].messages[0]["content"][0] == {"type": "video"}
    assert good["verl"].video_shapes == [(6, 64, 48)]  # 5 frames, the last repeated
    clip = good["frames"].load_videos(VideoSampling(fps=2.0))[0]
    assert len(clip.frames) == 6 and [red(f) for f in clip.frames] == [0, 7, 14, 21, 28, 28]
    # a native row written back loads as the same sample
    again = load_dataset([to_native_row(good["native"], tmp_path / "out")], video=VideoSampling()).samples[0]
    assert again.videos == good["native"].videos and again.messages == good["native"].messages
    assert Columns().apply({"problem": "q", "video": "clip.mp4"})["video"] == "clip.mp4"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    videos = {}
    for n, (w, h) in [(4, (64, 48)), (6, (56, 56)), (9, (90, 60))]:
        write_video(out / f"{n}.mp4", ramp(n, w, h), fps=4)
        videos[n] = decode(str(out / f"{n}.mp4"), VideoSampling(fps=4.0, min_frames=2, max_frames=16))
    return videos


def reference_patchify(frames: np.ndarray, patch: int = 14, merge: int = 2, tp: int = 2) -> np.ndarray:
    """transformers' Qwen2VLVideoProcessor.patchify, in numpy: [T, C, H, W] -> [T/2 * gh * gw, C * 2 * p * p]."""
    t, c, h, w = frames.shape
    gh, gw = h // patch, w // patch
    x = frames.reshape(t // tp, tp, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t // tp * gh * gw, c * tp * patch * patch)


def test_video_rows_are_the_video_processors_layout(encoder):
    """Pairing the image processor's rows gives the rows transformers' video processor lays out for the same
    normalised frames."""
    rng = np.random.default_rng(0)
    frames = rng.random((4, 3, 56, 84)).astype(np.float32)
    per_image = np.concatenate(
        [reference_patchify(np.stack([f, f])) for f in frames]
    )  # an image: its frame twice
    got = pair_frames(torch.from_numpy(per_image), 4).numpy()
    np.testing.assert_array_equal(got, reference_patchify(frames))


def test_token_counts_match_the_encoding_and_the_model(encoder, clips, tiny_model_dir):
    model = load_model(str(tiny_model_dir)).eval()
    for n, video in clips.items():
        prompt = encoder.encode(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
            [],
            "s",
            videos=[video],
        )
        t, h, w = prompt.video_grid_thw[0].tolist()
        assert t == len(video.frames) // 2 == n // 2  # 9 frames: 8 sampled (an even count)
        assert (
            prompt.video_tokens
            == [t * h * w // 4]
            == [encoder.tokens_per_video(len(video.frames), *video.size)]
        )
        assert prompt.input_ids.count(encoder.video_token_id) == prompt.video_tokens[0]
        assert prompt.second_per_grid == [pytest.approx(2 / video.fps)]
        features = model.model.get_video_features(
            prompt.pixel_values_videos, prompt.video_grid_thw
        ).pooler_output
        assert sum(len(f) for f in features) == prompt.video_tokens[0]
    short = ChatEncoder.from_pretrained(tiny_model_dir, max_prompt_length=20)
    with pytest.raises(PromptError, match="over max_prompt_length=20"):
        short.encode(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
            [],
            "s9",
            videos=[clips[9]],
        )
    with pytest.raises(PromptError, match="1 video placeholder"):
        encoder.encode(
            [{"role": "user", "content": [{"type": "video"}]}], [], "s", videos=[clips[4], clips[6]]
        )


def test_frame_budget_lowers_the_frame_size(encoder):
    """video_total_pixels is shared by the frames: 16 frames get smaller frames than 4 of the same video."""
    big = ChatEncoder(
        encoder.tokenizer,
        encoder.image_processor,
        video=VideoSampling(max_pixels=250_000, total_pixels=800_000),
    )
    assert big.tokens_per_video(4, 448, 448) == 2 * 256  # 448 x 448 fits: (448 / 28)^2 tokens per pair
    assert big.tokens_per_video(16, 448, 448) < 8 * 256
    assert big.tokens_per_video(16, 448, 448) * 784 <= 800_000


def hand_rope(
    prefix: int, grid: tuple[int, int, int], seconds: float, tokens_per_second: float, merge: int = 2
):
    """The 3D positions of `prefix` text tokens, one video of `grid`, then 3 text tokens: Qwen2.5-VL's rule
    written out (temporal index x seconds per pair x tokens_per_second; rows; columns; text after the largest)."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    rows = [[i, i, i] for i in range(prefix)]
    for k in range(t):
        for r in range(h):
            for c in range(w):
                rows.append([prefix + int(k * seconds * tokens_per_second), prefix + r, prefix + c])
    after = prefix + max(h, w)
    rows += [[after + i] * 3 for i in range(3)]
    return torch.tensor(rows).T


@pytest.mark.parametrize("frames,size", [(4, (56, 56)), (6, (84, 56)), (8, (56, 112))])
def test_rope_positions_of_video_tokens_against_a_hand_computation(
    encoder, tiny_model_dir, tmp_path, frames, size
):
    model = load_model(str(tiny_model_dir)).eval()
    write_video(tmp_path / "v.mp4", ramp(frames, *size), fps=4)
    video = decode(str(tmp_path / "v.mp4"), VideoSampling(fps=2.0, min_frames=2))
    prompt = encoder.encode(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
        [],
        "s",
        videos=[video],
        add_generation_prompt=False,
    )
    batch = encoder.collate([prompt])
    positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )
    ids = prompt.input_ids
    first = ids.index(encoder.video_token_id)
    grid = tuple(prompt.video_grid_thw[0].tolist())
    tokens_per_second = model.config.vision_config.tokens_per_second
    expected = hand_rope(first, grid, prompt.second_per_grid[0], tokens_per_second)
    n = expected.shape[1]
    assert torch.equal(positions[:, 0, :n], expected)
    assert bool((batch["mm_token_type_ids"][0] == 2).sum() == prompt.video_tokens[0])


def test_qwen2_vl_and_qwen3_vl_video_layouts(encoder, clips):
    """Qwen2-VL takes no seconds per grid; Qwen3-VL writes a timestamp and a vision span per pair of frames."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    qwen2 = ChatEncoder(encoder.tokenizer, encoder.image_processor, video_timing=VideoTiming.NONE)
    assert "second_per_grid_ts" not in qwen2.collate([qwen2.encode(messages, [], "s", videos=[clips[6]])])
    qwen3 = ChatEncoder(encoder.tokenizer, encoder.image_processor, video_timing=VideoTiming.TEXT)
    prompt = qwen3.encode(messages, [], "s", videos=[clips[6]])
    text = qwen3.tokenizer.decode(prompt.input_ids)
    per_pair = prompt.video_tokens[0] // 3
    times = [(a + b) / 2 for a, b in zip(clips[6].timestamps[::2], clips[6].timestamps[1::2], strict=True)]
    span = "".join(
        f"<{t:.1f} seconds><|vision_start|>{'<|video_pad|>' * per_pair}<|vision_end|>" for t in times
    )
    assert span in text and text.count("<|vision_start|>") == 3
    assert qwen3.prompt_length(messages, [], "s", [(6, *clips[6].size)]) == len(prompt.input_ids)


def test_mixed_batches_share_each_video_and_match_each_row_alone(encoder, tiny_model_dir, clips, tmp_path):
    """Video, image, video + image and text-only prompts in one batch, 2 responses each: padded == packed ==
    each row on its own; each distinct video is encoded once."""
    model = load_model(str(tiny_model_dir)).eval()
    image = Image.fromarray(ramp(1, 56, 56)[0])
    q = {"type": "text", "text": "which?"}
    prompts = [
        encoder.encode([{"role": "user", "content": [{"type": "video"}, q]}], [], "v", videos=[clips[6]]),
        encoder.encode([{"role": "user", "content": [{"type": "image"}, q]}], [image], "i"),
        encoder.encode(
            [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, q]}],
            [image],
            "iv",
            videos=[clips[4]],
        ),
        encoder.encode([{"role": "user", "content": "text only"}], [], "t"),
    ]
    owners = [0, 0, 1, 1, 2, 2, 3, 3]
    torch.manual_seed(0)
    completion = torch.randint(20, 200, (8, 5))

    def inputs(rows):
        batch = encoder.collate_shared(prompts, [owners[r] for r in rows], padding_side="left")
        batch["input_ids"] = torch.cat([batch["input_ids"], completion[rows]], 1)
        batch["attention_mask"] = torch.cat(
            [batch["attention_mask"], torch.ones(len(rows), 5, dtype=torch.long)], 1
        )
        batch["mm_token_type_ids"] = torch.cat(
            [batch["mm_token_type_ids"], torch.zeros(len(rows), 5, dtype=torch.long)], 1
        )
        batch["completion_ids"], batch["completion_mask"] = (
            completion[rows],
            torch.ones(len(rows), 5, dtype=torch.long),
        )
        return batch

    rows = list(range(8))
    batch = inputs(rows)
    assert len(batch["video_grid_thw_distinct"]) == 2 and batch["video_source"].tolist() == [0, 0, 1, 1]
    with torch.no_grad():
        padded, _ = completion_logprobs(model, inputs(rows))
        packed, _ = completion_logprobs(model, inputs(rows), packed=True)
        alone = torch.cat([completion_logprobs(model, inputs([r]))[0] for r in rows])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_the_synthetic_video_task(tmp_path):
    paths = toy_video.write_dataset(tmp_path, 12, 6, seed=3, val=3)
    result = load_dataset(str(paths["train"]), video=VideoSampling(fps=4.0, max_frames=12))
    assert not result.problems and len(result.samples) == 12
    test_ids = {
        json.loads(line)["solution"] + json.loads(line)["messages"][0]["content"][1]["text"]
        for line in paths["test"].read_text().splitlines()
    }
    assert len(test_ids) == 6
    for level, generator in toy_video.GENERATORS.items():
        for seed in range(20):
            clip = generator(random.Random(seed))
            assert clip.level == level and f"<answer>{clip.answer}</answer>" in clip.reference()
            frames = toy_video.render(clip)
            visible = [bool((frame.min(-1) < 200).any()) for frame in frames]  # a coloured pixel
            if clip.skill == "blink":  # the shape is gone for exactly `answer` pairs of frames
                assert (len(frames) - sum(visible)) // 2 == int(clip.answer)
            if clip.skill == "direction":
                assert clip.answer in toy_video.DIRECTIONS
    sample = result.samples[0]
    video = sample.load_videos(VideoSampling(fps=4.0, max_frames=12))[0]
    assert len(video.frames) == 12 and video.size == (toy_video.SIZE, toy_video.SIZE)
    assert isinstance(video, Video)


def mixed_data(tmp_path) -> Path:
    """Rows with a video, with an image, with both, and text only (the order puts different kinds on each
    process of a 2-process run)."""
    from observe_r1.toy import synth

    videos = toy_video.write_dataset(tmp_path / "v", 8, 0, seed=1)
    images = synth.write_dataset(tmp_path / "i", 8, 0, seed=1)
    v = [json.loads(line) for line in videos["train"].read_text().splitlines()]
    i = [json.loads(line) for line in images["train"].read_text().splitlines()]
    for row in v:
        row["messages"][0]["content"][0]["video"] = str(
            tmp_path / "v" / row["messages"][0]["content"][0]["video"]
        )
    for row in i:
        row["messages"][0]["content"][0]["image"] = str(
            tmp_path / "i" / row["messages"][0]["content"][0]["image"]
        )
    both = []
    for k, (a, b) in enumerate(zip(v[4:], i[4:], strict=True)):
        content = [b["messages"][0]["content"][0], *a["messages"][0]["content"]]  # an image, then the video
        both.append({**a, "id": f"both-{k}", "messages": [{"role": "user", "content": content}]})
    text = [
        {"id": f"text-{k}", "messages": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"}
        for k in range(4)
    ]
    rows = [r for quad in zip(v[:4], i[:4], both, text, strict=True) for r in quad]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_processes_with_and_without_visual_input_train_like_one(shaping, tmp_path, strategy):
    """Micro-batches with videos, images, both or neither on each of 2 processes (the vision tower trained):
    no deadlock under FSDP or DDP, and the same weights as one process."""
    from tests.test_fsdp import run_ok
    from tests.test_train import TORCHRUN, cli, weights

    data = mixed_data(tmp_path)
    common = [f"data.train=[{data}]", "data.test=[]", "data.sampler=sequential", "optim.max_steps=2",
              "optim.micro_batch_size=2", "logging.dump_rollouts_every=0", "model.freeze_vision=false",
              "data.video_fps=4", "data.video_max_frames=12", "data.max_prompt_length=512"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(cli(one, shaping, *common))
    run_ok(TORCHRUN + cli(two, shaping, *common, f"parallel.strategy={strategy}")[3:])
    a, b = weights(one / "checkpoints/step-000002"), weights(two / "checkpoints/step-000002")
    base = weights(one / "base-model")
    assert any(not torch.equal(a[k], base[k]) for k in a if "visual" in k)  # the tower trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4)


def test_the_vllm_request_carries_the_videos_at_the_prompts_frame_size(encoder, clips):
    """vLLM's Qwen-VL path imports torchvision (no CPU build here: tests/test_vllm.py skips the VL check), so
    this checks the request the backend builds: the frames already sampled and resized to the prompt's grid
    (the engine's processor then counts the same tokens), with metadata that stops it from sampling again."""
    from types import SimpleNamespace

    from observe_r1.rollout.base import PromptBatch
    from observe_r1.rollout.vllm import VLLMRollout

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    prompt = encoder.encode(messages, [], "s", videos=[clips[9]])
    batch = PromptBatch([prompt], [0], videos=[[clips[9]]])
    request = VLLMRollout._request(SimpleNamespace(encoder=encoder), batch, 0)
    frames, meta = request["multi_modal_data"]["video"][0]
    _, h, w = prompt.video_grid_thw[0].tolist()
    assert frames.shape == (8, h * 14, w * 14, 3) and frames.dtype == np.uint8
    assert meta["do_sample_frames"] is False and meta["total_num_frames"] == 8
    assert meta["fps"] == pytest.approx(clips[9].fps) and request["prompt_token_ids"] == prompt.input_ids


def test_a_tool_image_after_a_video_prompt_keeps_the_video(encoder, clips):
    """A multi-turn response whose tool returned an image continues from its prompt's video and images, then
    the tool's image (`rollout.base.with_trace_images`)."""
    from observe_r1.rollout.base import Trace, with_trace_images

    image = Image.fromarray(ramp(1, 56, 56)[0])
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}]
    prompt = encoder.encode(messages, [], "s", videos=[clips[6]])
    pixels, grid = encoder.process_images([image])
    trace = Trace(images=[image], pixel_values=pixels, image_grid_thw=grid, image_tokens=[4])
    merged = with_trace_images(prompt, trace, [7, 8])
    assert merged.input_ids == prompt.input_ids + [7, 8] and merged.image_tokens == [4]
    assert torch.equal(merged.pixel_values_videos, prompt.pixel_values_videos)
    assert merged.video_tokens == prompt.video_tokens and merged.second_per_grid == prompt.second_per_grid


def test_a_video_too_slow_to_decode_is_an_error_after_the_timeout(monkeypatch, tmp_path):
    """A decode that does not end (a pathological file) costs `timeout_s`, then the prompt is skipped."""
    import observe_r1.data.video as video_module

    def stuck(ref, sampling):
        time.sleep(3)

    monkeypatch.setattr(video_module, "decode", stuck)
    started = time.perf_counter()
    with pytest.raises(VideoError, match="video_timeout_s=0.2"):
        video_module.load_videos(["slow.mp4"], VideoSampling(timeout_s=0.2))
    assert time.perf_counter() - started < 1.5
