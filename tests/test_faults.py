"""Runs that lose or mix work, planted files, stale caches and rows that exhaust memory (issue 24, cases 5-10):
each test failed on the code before the fix."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from observe_r1.cli import main
from observe_r1.config import ConfigError
from observe_r1.data.dataset import load_dataset
from observe_r1.training import checkpoint as ckpt
from tests.test_train import ROOT, cli, metrics, run

FAST = ["logging.dump_rollouts_every=0", "optim.mini_batch_size=16", "logging.eval_every=0", "data.test=[]"]


def start(out, shaping, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        cli(out, shaping, *FAST, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def wait_for_steps(proc, out, steps, timeout=120):
    deadline = time.time() + timeout
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= steps):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the run ended"
        assert time.time() < deadline, "the run did not reach its steps"
        time.sleep(0.05)


# ------------------------------------------------------------------ 5. signals write a checkpoint


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resume_continues(sig, code, shaping, tmp_path):
    """SIGTERM (a preemption, scancel) and Ctrl-C wrote nothing: with checkpoint.every 50 a preemption lost up to
    49 steps. Now the step finishes, a checkpoint of it is written, the run exits 128 + the signal."""
    out = tmp_path / "run"
    proc = start(out, shaping, "optim.max_steps=60", "checkpoint.every=50")
    wait_for_steps(proc, out, 2)
    proc.send_signal(sig)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, printed
    done = len([r for r in metrics(out) if "actor/loss" in r])
    last = ckpt.latest_checkpoint(out)
    assert last is not None and last.name == f"step-{done:06d}" and done < 60
    assert f"stopped by {signal.Signals(sig).name} after step {done}" in printed and "resume" in printed
    resumed = subprocess.run(
        cli(out, shaping, *FAST, f"optim.max_steps={done + 1}", "checkpoint.every=50"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [r["step"] for r in metrics(out) if "actor/loss" in r] == list(range(done + 1))  # none twice


def test_a_second_ctrl_c_stops_at_once(shaping, tmp_path):
    out = tmp_path / "run"
    proc = start(out, shaping, "optim.max_steps=60", "checkpoint.every=50", "rollout.max_new_tokens=96")
    wait_for_steps(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "not saved" in printed, printed


# ------------------------------------------------------------------ 6. one run per output directory


def test_two_runs_into_one_directory_are_refused_and_a_killed_run_leaves_no_lock(shaping, tmp_path):
    """Both exited 0 with metrics.jsonl interleaved."""
    out = tmp_path / "run"
    first = start(out, shaping, "optim.max_steps=200")
    wait_for_steps(first, out, 1)
    second = subprocess.run(
        cli(out, shaping, *FAST, "optim.max_steps=200"), capture_output=True, text=True, cwd=ROOT
    )
    assert second.returncode == 2 and f"is in use by another run (pid {first.pid} on" in second.stdout
    first.kill()  # SIGKILL: no clean-up runs
    first.wait()
    steps = len([r for r in metrics(out) if "actor/loss" in r])
    third = subprocess.run(
        cli(out, shaping, *FAST, "optim.max_steps=2", "checkpoint.resume=none", "checkpoint.overwrite=true"),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert third.returncode == 0, third.stdout + third.stderr
    assert steps >= 1 and [r["step"] for r in metrics(out) if "actor/loss" in r] == [0, 1]


def test_a_process_may_take_its_own_directory_again(tmp_path):
    from observe_r1.training import rundir

    rundir.claim(tmp_path)
    rundir.claim(tmp_path)  # re-entrant: a staged run, a second train() from the same notebook
    rundir.release(tmp_path)


# ------------------------------------------------------------------ 7. overwrite deletes only ours


def test_overwrite_keeps_what_another_tool_wrote(shaping, tmp_path, caplog):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "other-tool.events").write_text("not ours")
    (out / "rollouts").mkdir()
    (out / "rollouts" / "notes.txt").write_text("not ours")
    run(shaping, out, *FAST, "optim.max_steps=2")
    (out / "checkpoints" / "exported").mkdir()
    (out / "checkpoints" / "exported" / "model.bin").write_text("not ours")
    with caplog.at_level("WARNING"):
        run(shaping, out, *FAST, "optim.max_steps=1", "checkpoint.resume=none", "checkpoint.overwrite=true")
    for kept in ("tensorboard/other-tool.events", "rollouts/notes.txt", "checkpoints/exported/model.bin"):
        assert (out / kept).is_file(), kept
    assert [p.name for p in ckpt.checkpoint_dirs(out)] == ["step-000001"]
    assert "kept checkpoints/exported, rollouts, tensorboard" in caplog.text


def test_overwrite_refuses_a_metrics_file_it_did_not_write(shaping, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"another": "tool"}\n')
    with pytest.raises(ConfigError, match="metrics.jsonl was not written by observe-r1"):
        run(shaping, out, *FAST, "optim.max_steps=1", "checkpoint.resume=none", "checkpoint.overwrite=true")
    assert (out / "metrics.jsonl").read_text() == '{"another": "tool"}\n'


# ------------------------------------------------------------------ 8. planted files, eval checks the manifest


@pytest.fixture(scope="module")
def two_steps(shaping, tmp_path_factory):
    return run(
        shaping, tmp_path_factory.mktemp("two") / "run", *FAST, "optim.max_steps=2", "checkpoint.keep_last=5"
    )


def test_an_unlisted_file_makes_a_checkpoint_untrusted_and_resume_falls_back(
    two_steps, shaping, tmp_path, caplog
):
    """A planted adapter_model.safetensors changed what resume loaded and crashed it (AttributeError)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    planted = out / "checkpoints" / "step-000002" / "adapter_model.safetensors"
    planted.write_bytes(b"planted")
    assert ckpt.verify(planted.parent) == "adapter_model.safetensors is not in its manifest"
    with caplog.at_level("INFO"):
        run(shaping, out, *FAST, "optim.max_steps=3", "checkpoint.keep_last=5")
    assert "step-000002 cannot be trusted (adapter_model.safetensors is not in its manifest)" in caplog.text
    assert "step-000001 at step 1" in caplog.text  # the one before it
    assert [r["step"] for r in metrics(out) if "actor/loss" in r] == [0, 1, 2]


def test_eval_refuses_a_checkpoint_that_fails_its_manifest(two_steps, synth_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "step"
    shutil.copytree(two_steps / "checkpoints" / "step-000002", model)
    data = bytearray((model / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    (model / "model.safetensors").write_bytes(bytes(data))
    code = main(["eval", "--model", str(model), "--data", str(synth_dir / "test.jsonl"), "--limit", "2"])
    assert (
        code == 2
        and "cannot be trusted: model.safetensors does not match its checksum" in capsys.readouterr().out
    )


# ------------------------------------------------------------------ 9. the ladder's score cache


def test_the_score_cache_is_keyed_by_model_and_settings_and_survives_a_torn_line(tmp_path, caplog):
    from observe_r1.recipes.ladder import _cached, fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    k4, k8 = fingerprint(model, k=4), fingerprint(model, k=8)
    assert k4 != k8
    cache = tmp_path / "scores.jsonl"
    cache.write_text(
        json.dumps({"id": "a", "difficulty": 0.5, "key": k4})
        + "\n"
        + json.dumps({"id": "b", "difficulty": 0.25, "key": k4})
        + "\n"
        + '{"id": "c", "diffic'
    )
    with caplog.at_level("INFO"):
        assert set(_cached(cache, k4)) == {"a", "b"}
        assert _cached(cache, k8) == {}  # another k: scored again
    assert f"{cache}: skipped unreadable line(s) 3" in caplog.text
    time.sleep(0.01)
    (model / "config.json").write_text("{ }")  # the model was retrained in place
    assert fingerprint(model, k=4) != k4


def test_a_rebuild_with_another_k_scores_again(tiny_model_dir, synth_dir, tmp_path):
    out = tmp_path / "ladder.jsonl"
    args = [
        "ladder",
        "build",
        "--data",
        str(synth_dir / "test.jsonl"),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--max-new-tokens",
        "4",
        "--system-prompt",
        "none",
    ]
    assert main([*args, "--k", "2"]) == 0
    first = out.with_suffix(".scores.jsonl").read_text().splitlines()
    assert main([*args, "--k", "3"]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".scores.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(first) and {r["k"] for r in rows[len(first) :]} == {3}


# ------------------------------------------------------------------ 10. rows and images that exhaust memory


def peak_mib(code: str) -> tuple[float, str]:
    """Run `code` in a fresh interpreter; its peak resident memory (MiB) and output."""
    script = (
        f"{code}\nimport resource\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.rsplit("PEAK", 1)[1]), proc.stdout


def test_a_huge_text_row_is_refused_before_it_is_tokenised(tiny_model_dir, tmp_path):
    """One 20 MB row took 6.5 GB and 72 s to be rejected as too long."""
    data = tmp_path / "big.jsonl"
    row = {"id": "big", "messages": [{"role": "user", "content": "count " * 3_500_000}], "answer": "1"}
    data.write_text(
        json.dumps(row)
        + "\n"
        + json.dumps({**row, "id": "ok", "messages": [{"role": "user", "content": "How many?"}]})
        + "\n"
    )
    started = time.perf_counter()
    peak, printed = peak_mib(
        "from observe_r1.data.dataset import load_dataset\nfrom observe_r1.models.inputs import ChatEncoder\n"
        f"enc = ChatEncoder.from_pretrained({str(tiny_model_dir)!r}, max_prompt_length=1024)\n"
        f"r = load_dataset({str(data)!r}, enc)\nprint([(p.line, p.kind) for p in r.problems], len(r.samples))"
    )
    assert "[(1, 'prompt_too_long')] 1" in printed
    assert time.perf_counter() - started < 30 and peak < 1500, (peak, printed)


def test_a_line_over_the_row_limit_is_refused_unread(tmp_path, monkeypatch):
    """A 400 MB row was OOM-killed at 19.3 GB: a line over MAX_ROW_BYTES is skipped in chunks, never read."""
    from observe_r1.data import sources

    monkeypatch.setattr(sources, "MAX_ROW_BYTES", 1 << 20)
    data = tmp_path / "rows.jsonl"
    good = json.dumps({"id": "ok", "messages": [{"role": "user", "content": "How many?"}], "answer": "1"})
    huge = json.dumps(
        {"id": "huge", "messages": [{"role": "user", "content": "x" * (5 << 20)}], "answer": "1"}
    )
    data.write_text(good + "\n" + huge + "\n" + good.replace('"ok"', '"ok2"') + "\n")
    result = load_dataset(data, check_image_files=False)
    assert [s.id for s in result.samples] == ["ok", "ok2"]
    assert [(p.line, p.kind) for p in result.problems] == [(2, "row_too_large")]


def test_a_line_over_64_mib_is_never_held_whole(tmp_path):
    """An 80 MiB line costs its 64 MiB read at most (twice, in the reader's buffer), over what the same load of
    a small file costs."""
    data, small = tmp_path / "rows.jsonl", tmp_path / "small.jsonl"
    small.write_text('{"id": "s", "answer": "1", "messages": [{"role": "user", "content": "hi"}]}\n')
    with data.open("w") as f:
        f.write('{"id": "huge", "answer": "1", "messages": [{"role": "user", "content": "')
        for _ in range(80):
            f.write("x" * (1 << 20))
        f.write('"}]}\n')
    code = "from observe_r1.data.dataset import load_dataset\nr = load_dataset({!r})\nprint([p.kind for p in r.problems])"
    base, _ = peak_mib(code.format(str(small)))
    peak, printed = peak_mib(code.format(str(data)))
    assert "['row_too_large']" in printed and peak - base < 200, (base, peak, printed)


def test_an_image_rewritten_into_a_decompression_bomb_is_counted_and_skipped(tiny_model_dir, tmp_path):
    """A non-OSError from PIL (DecompressionBombError) ended the run."""
    from observe_r1.models.inputs import ChatEncoder
    from observe_r1.training.scoring import encode_prompts

    rows = []
    for i in range(2):
        Image.new("RGB", (56, 56), "red").save(tmp_path / f"im{i}.png")
        rows.append(
            {
                "id": f"s{i}",
                "answer": "1",
                "images": [str(tmp_path / f"im{i}.png")],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "n?"}]}
                ],
            }
        )
    samples = load_dataset(rows).samples
    bomb = Image.new("1", (20000, 20000))  # 400M pixels, over PIL's 179M limit
    bomb.save(tmp_path / "im1.png")
    encoder = ChatEncoder.from_pretrained(tiny_model_dir, max_prompt_length=1024)
    prompts, images, bad, _ = encode_prompts(samples, [s.messages for s in samples], encoder)
    assert bad == 1 and len(prompts) == 2 and samples[1].id == "s0"  # replaced by the good one, counted


def test_exif_rotation_and_16_bit_greys_are_what_the_model_sees(tmp_path):
    from observe_r1.models.inputs import as_rgb

    tall = Image.new("RGB", (40, 80), "white")
    tall.paste(Image.new("RGB", (40, 10), "red"), (0, 0))  # red at the top
    exif = tall.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    tall.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    rows = [
        {
            "id": "p",
            "answer": "1",
            "images": [str(tmp_path / "photo.jpg")],
            "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "n?"}]}],
        }
    ]
    sample = load_dataset(rows).samples[0]
    assert sample.image_sizes == [(80, 40)]  # the upright size, which the image tokens are counted from
    shown = sample.load_images()[0]
    assert shown.size == (80, 40) and shown.getpixel((75, 20))[1] < 60 and shown.getpixel((5, 20))[1] > 200
    grey = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))  # 16-bit grey
    assert grey.mode == "I;16" and grey.convert("RGB").getpixel((10, 10)) == (255, 255, 255)  # PIL: white
    assert as_rgb(grey).getpixel((10, 10)) == (40, 40, 40)  # 10400 / 257
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent: white, as transformers composites it
    assert as_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
