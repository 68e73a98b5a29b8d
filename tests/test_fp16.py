"""The fp16 path on the CPU (autocast with float16 and a GradScaler, as on a T4): a step whose
scaled gradients overflow is skipped, not applied, counted and logged, and a run interrupted in
the middle of its skipped steps resumes to exactly the run left alone."""

import json
import os
import subprocess
import sys

import pytest

from test_train import SMALL, assert_same_tensors, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# train.py with a loss scale of 2^24, far above what fp16 holds (65504): the first steps overflow
# and are skipped while the GradScaler halves its scale, as a real fp16 run's first steps can.
WRAPPER = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
from plumbing import runtime
real = runtime.pick_precision
def scaled(precision, device):
    autocast, _, name = real(precision, device)
    return autocast, torch.amp.GradScaler(device.type, init_scale=2.0 ** 24), name
runtime.pick_precision = scaled
import train
sys.argv = ["train.py", *sys.argv[2:]]
sys.exit(train.main())
"""
FP16 = [*SMALL, "--steps", "8", "--log-every", "1", "--save-every", "0", "--eval-every", "0",
        "--precision", "fp16"]


def run_fp16(*args):
    proc = subprocess.run([sys.executable, "-c", WRAPPER, ROOT, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow   # three short fp16 runs of train.py: `pytest -m slow`, CI's second step
def test_overflowing_steps_are_skipped_counted_and_a_resume_is_exact(tmp_path):
    proc = run_fp16("--out", str(tmp_path / "ref"), *FP16)
    assert "fp16 (--precision fp16)" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["skipped_steps"] for r in rows if "loss" in r]
    # the first steps skipped while the scale comes down to what fp16 holds, then steps applied (a
    # later step may overflow again and halve the scale once more: the count only grows)
    assert skipped[0] == 1 and skipped[-1] > 1 and skipped == sorted(skipped), skipped
    assert skipped[-1] < len(skipped), f"every step overflowed: {skipped}"
    ref = load(tmp_path / "ref" / "ckpt.pt")
    assert ref["scaler"]["scale"] == 2.0 ** 24 / 2 ** skipped[-1]
    assert f"| {skipped[-1]} skipped (fp16 overflow) |" in proc.stdout
    # a skipped step is not applied: AdamW stepped only the 8 - skipped steps that were
    assert {int(s["step"]) for s in ref["optimizer"]["state"].values()} == {8 - skipped[-1]}
    # stopped by Ctrl-C in the middle of the skipped steps, then resumed: the same run
    run_fp16("--out", str(tmp_path / "cut"), *FP16, "--interrupt-at", "2")
    run_fp16("--out", str(tmp_path / "cut"), *FP16, "--resume")
    cut = load(tmp_path / "cut" / "ckpt.pt")
    for key in ("student", "teacher", "optimizer", "scaler", "step"):
        assert_same_tensors(ref[key], cut[key], key)
