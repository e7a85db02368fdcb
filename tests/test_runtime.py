"""The run's runtime: precision contexts."""

import torch

from observe_r1.training.runtime import autocast


def test_bf16_on_cpu_covers_the_training_passes_not_generation():
    cpu = torch.device("cpu")
    with autocast(cpu, "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, "bfloat16", generation=True):  # HF generate under CPU autocast is about 2x slower
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, "auto"):  # fp32 on CPU unless asked
        assert not torch.is_autocast_enabled("cpu")


def test_accelerate_launch_without_multi_gpu_is_detected():
    from observe_r1.training.runtime import processes_asked_of_accelerate as asked

    launcher = [
        "python",
        "/venv/bin/accelerate",
        "launch",
        "--num_processes",
        "2",
        "-m",
        "observe_r1.cli",
        "train",
    ]
    assert asked({"ACCELERATE_USE_CPU": "False"}, launcher) == 2
    assert asked({"ACCELERATE_USE_CPU": "True"}, ["accelerate", "launch", "--num_processes=4", "x.py"]) == 4
    assert (
        asked({"ACCELERATE_USE_CPU": "False", "WORLD_SIZE": "2"}, launcher) == 0
    )  # --multi_gpu: torchrun ran
    assert asked({}, launcher) == 0 and asked({"ACCELERATE_USE_CPU": "False"}, ["bash", "run.sh"]) == 0


def test_accelerate_launch_without_multi_gpu_warns(tmp_path):
    """The real launcher: `accelerate launch --num_processes 2 script.py` starts one process, and it says so."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "start.py"
    script.write_text("import logging\nlogging.basicConfig()\nfrom observe_r1.training.runtime import make_accelerator\n"
                      "print('processes', make_accelerator().num_processes)\n")  # fmt: skip
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(accelerate), "launch", "--num_processes", "2", str(script)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert "processes 1" in done.stdout
    assert "started ONE process" in done.stderr and "--multi_gpu" in done.stderr
