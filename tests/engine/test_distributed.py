"""The multi-process path of the training loop (gloo on CPU). Slow: no speed-up on 2 cores, it only proves
that DDP through accelerate runs, and that rank 0 alone writes the output."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_two_processes(target_dir, world_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "obliviate.cli",
        "unlearn",
        "--model",
        str(target_dir),
        "--forget",
        str(world_dir / "forget10.jsonl"),
        "--retain",
        str(world_dir / "retain90.jsonl"),
        "--method",
        "npo",
        "--steps",
        "4",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["history"]) == 4 and log["processes"] == 2
    assert (out / "model.safetensors").is_file()
