"""train.py --method clip over k micro-batches: exact accumulation with the feature cache trains,
resumes exactly, and refuses a checkpoint whose settings or format mean another computation."""

import json
import shutil

import pytest
import torch

from test_train import SMALL, assert_same_tensors, load, run

# three train.py runs: `pytest -m slow`, CI's second step (tests/test_accumulate.py holds the
# feature cache's exactness in the fast suite)
pytestmark = pytest.mark.slow

# ---- --method clip over k micro-batches: exact accumulation with the feature cache ----------------

CLIP4 = [*SMALL, "--method", "clip", "--accum-steps", "4", "--steps", "4", "--eval-every", "0"]


@pytest.fixture(scope="module")
def exact_clip_runs(tmp_path_factory):
    """--method clip --accum-steps 4 left alone for 4 steps, and the same run stopped by Ctrl-C
    after step 2 (a copy of its step-2 folder is kept for the resume-refusal test)."""
    root = tmp_path_factory.mktemp("clip")
    proc = run("train.py", "--out", str(root / "ref"), *CLIP4)
    run("train.py", "--out", str(root / "cut"), *CLIP4, "--interrupt-at", "2")
    shutil.copytree(root / "cut", root / "at2")
    return root, proc


def test_exact_clip_accumulation_trains_and_resumes_exactly(exact_clip_runs):
    root, proc = exact_clip_runs
    assert ("method: clip: exact accumulation over the window (feature cache), 31 negatives per "
            "row, 2 student forwards per sample, duplicate-aware positives") in proc.stdout
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert steps and not any("alpha" in line or "| m " in line for line in steps)   # CLIP has no teacher
    assert load(root / "cut" / "ckpt.pt")["step"] == 2
    run("train.py", "--out", str(root / "cut"), *CLIP4, "--resume")
    a, b = load(root / "ref" / "ckpt.pt"), load(root / "cut" / "ckpt.pt")
    assert a["step"] == 4 and a["teacher"] is None and a["config"]["format"] == 3
    for key in ("student", "optimizer", "step", "rng"):
        assert_same_tensors(a[key], b[key], key)
    losses = [[json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (root / "ref", root / "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 4


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
def test_resume_refuses_a_changed_method_and_a_checkpoint_of_an_older_layout(exact_clip_runs):
    root, _ = exact_clip_runs
    at2 = root / "at2"
    proc = run("train.py", "--out", str(at2), *CLIP4, "--method", "clip-naive", "--resume", check=False)
    assert proc.returncode == 2 and "--method clip (saved) vs clip-naive" in proc.stderr
    # A checkpoint of another format (here 2, before --duplicate-aware applied to CLIP, so that its
    # --method clip meant one-hot positives): refused by --resume, still read by eval.py.
    ckpt = load(at2 / "ckpt.pt")
    ckpt["config"]["format"] = 2
    torch.save(ckpt, at2 / "ckpt.pt")
    proc = run("train.py", "--out", str(at2), *CLIP4, "--resume", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train.py: error: --resume: {at2 / 'ckpt.pt'} was written by another version of train.py "
        f"(checkpoint format 2, this one 3), whose options did not all mean what they mean here: "
        f"it cannot be resumed (eval.py still evaluates it); train again in another --out")
    run("eval.py", "--checkpoint", str(at2), "--n-per-class", "4", "--n-retrieval", "10",
        "--seeds", "1")
