"""train.py end to end: a short run, eval.py on its checkpoint, exact resume after Ctrl-C or a kill,
torchrun against one process, a non-finite loss, and the start-up errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run small enough for seconds on 2 CPU cores: 32 px images, 512 pairs, windows of 2 x 8.
SMALL = ["--image-size", "32", "--n-train", "512", "--batch-size", "8", "--accum-steps", "2",
         "--queue-size", "64", "--steps", "6", "--warmup-steps", "2", "--alpha-warmup", "2",
         "--vocab-size", "300", "--log-every", "1", "--save-every", "2", "--eval-every", "3",
         "--eval-per-class", "10", "--eval-retrieval", "40", "--data-cache", "", "--workers", "1"]


def run(script, *args, check=True, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b, where=""):
    """Bit-for-bit equality of two nested checkpoint structures."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("ref")
    proc = run("train.py", "--out", str(out), *SMALL)
    return out, proc


def test_end_to_end_then_eval_json(reference_run, tmp_path):
    out, proc = reference_run
    for name in ("ckpt.pt", "tokenizer.json", "metrics.jsonl", "eval.json"):
        assert (out / name).exists(), name
    assert "zero-shot" in proc.stdout and "Recall@" in proc.stdout       # the final table
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "alpha", "momentum", "temperature", "samples_per_s", "peak_mem_mb",
                "elapsed_s", "eta_s"):
        assert key in rows[0], key
    assert any("zero_shot_accuracy" in r for r in rows)                   # the quick eval at step 3
    ckpt = load(out / "ckpt.pt")
    assert ckpt["step"] == 6 and ckpt["samples_seen"] == 6 * 16
    assert len(ckpt["queue"]["ids"]) == 64 and int(ckpt["queue"]["filled"]) == 64
    # eval.py on the checkpoint folder
    out_json = tmp_path / "r.json"
    run("eval.py", "--checkpoint", str(out), "--json", str(out_json), "--n-per-class", "20",
        "--n-retrieval", "40")
    res = json.loads(out_json.read_text())
    assert set(res) == {"zero_shot", "few_shot", "retrieval"}
    assert set(res["retrieval"]) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    values = [*res["zero_shot"].values(), *res["few_shot"].values(), *res["retrieval"].values()]
    assert all(0.0 <= v <= 1.0 for v in values)


def test_train_on_an_exported_manifest(tmp_path):
    run("data.py", "export", "--out", str(tmp_path / "export"), "--n", "64", "--image-size", "32")
    out = tmp_path / "run"
    proc = run("train.py", "--out", str(out), "--train-manifest", str(tmp_path / "export" / "manifest.csv"),
               *SMALL, "--queue-size", "16", "--steps", "2", "--eval-every", "0")
    assert "64 pairs from" in proc.stdout
    assert load(out / "ckpt.pt")["step"] == 2


def test_resume_from_a_cached_manifest_matches_a_run_from_memory(tmp_path):
    """A manifest decoded into memory, against the same manifest memory-mapped from its cache by a
    run killed after step 3 and resumed (from the step-2 checkpoint): bit for bit the same."""
    sys.path.insert(0, ROOT)
    import synthetic
    manifest = synthetic.export_synthetic(tmp_path / "export", 64, image_size=32)
    common = [*SMALL, "--train-manifest", str(manifest), "--queue-size", "16",
              "--steps", "4", "--eval-every", "0", "--eval-per-class", "2", "--eval-retrieval", "10"]
    run("train.py", "--out", str(tmp_path / "memory"), *common)              # SMALL: --data-cache ''
    cached = [*common, "--data-cache", str(tmp_path / "cache")]
    first = run("train.py", "--out", str(tmp_path / "cached"), *cached, "--kill-at", "3", check=False)
    assert first.returncode == -9 and "data: cached in" in first.stdout
    again = run("train.py", "--out", str(tmp_path / "cached"), *cached, "--resume")
    assert "memory-mapped from" in again.stdout and "decoded" not in again.stdout
    a, b = load(tmp_path / "memory" / "ckpt.pt"), load(tmp_path / "cached" / "ckpt.pt")
    for key in ("student", "teacher", "queue", "optimizer", "step", "rng"):
        assert_same_tensors(a[key], b[key], key)


def test_patch_stem_and_class_token_train_and_their_checkpoint_evaluates(tmp_path):
    """--stem patch --pool cls (ViT's own embedding and pooling): the checkpoint holds the single
    p x p convolution and a class token, and eval.py rebuilds that model from the saved config
    (the default conv-stem, max-pooled model could not load these weights)."""
    out = tmp_path / "patch"
    run("train.py", "--out", str(out), *SMALL, "--stem", "patch", "--pool", "cls", "--steps", "1",
        "--eval-every", "0")
    student = load(out / "ckpt.pt")["student"]
    assert student["visual.patch_embed.weight"].shape == (128, 1, 8, 8)   # tiny: width 128, p = 8
    assert not any(k.startswith("visual.patch_embed.layers") for k in student)
    assert student["visual.cls_token"].shape == (1, 1, 128)
    run("eval.py", "--checkpoint", str(out), "--json", str(tmp_path / "r.json"), "--n-per-class", "4",
        "--n-retrieval", "10")
    assert set(json.loads((tmp_path / "r.json").read_text())) == {"zero_shot", "few_shot", "retrieval"}


@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_resume_is_exact(reference_run, tmp_path, how):
    """Ctrl-C after step 3 (saves at 3), or SIGKILL after step 3 (the periodic checkpoint is at 2):
    resuming with the same command plus --resume ends bit for bit where the uninterrupted run did."""
    ref, _ = reference_run
    out = tmp_path / how
    first = run("train.py", "--out", str(out), *SMALL, f"--{how}-at", "3", check=False)
    if how == "interrupt":
        assert first.returncode == 0, first.stderr
        assert "stop requested" in first.stdout and "--resume" in first.stdout
        assert load(out / "ckpt.pt")["step"] == 3
    else:
        assert first.returncode == -9
        assert load(out / "ckpt.pt")["step"] == 2
    # the same command plus --resume (a real kill does not strike twice: that flag is dropped)
    again = [f"--{how}-at", "3"] if how == "interrupt" else []
    run("train.py", "--out", str(out), *SMALL, *again, "--resume")
    a, b = load(ref / "ckpt.pt"), load(out / "ckpt.pt")
    for key in ("student", "teacher", "queue", "optimizer", "step", "rng"):
        assert_same_tensors(a[key], b[key], key)
    # the metrics file tells the same story once, with no rows from the lost steps repeated
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in ref_rows if "loss" in r]


def test_torchrun_two_ranks_equal_one_process_with_twice_the_micro_batch(tmp_path):
    common = [*SMALL, "--steps", "1", "--accum-steps", "1", "--alpha-warmup", "0",
              "--no-augment", "--eval-every", "0", "--eval-per-class", "2", "--eval-retrieval", "10"]
    run("train.py", "--out", str(tmp_path / "one"), *common, "--batch-size", "16",
        "--grad-dump", str(tmp_path / "g1.pt"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", os.path.join(ROOT, "train.py"),
                           "--out", str(tmp_path / "two"), *common, "--batch-size", "8",
                           "--grad-dump", str(tmp_path / "g2.pt")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    g1, g2 = load(tmp_path / "g1.pt"), load(tmp_path / "g2.pt")
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-7, msg=name)
    assert "2 process(es)" in proc.stdout and proc.stdout.count("model:") == 1   # rank 0 alone logs


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    proc = run("train.py", "--out", str(out), *SMALL, "--lr", "1e30", "--warmup-steps", "0",
               "--save-every", "1", "--max-grad-norm", "0", check=False)
    assert proc.returncode == 1
    assert "loss is" in proc.stdout and "last good checkpoint" in proc.stdout
    ckpt = load(out / "ckpt.pt")
    assert 1 <= ckpt["step"] < 6
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values())
    assert not (out / "ckpt.pt.tmp").exists()


@pytest.mark.parametrize("extra,message", [
    (["--image-size", "36"], "--image-size 36 is not divisible by the tiny preset's patch size 8"),
    (["--resume"], "--resume: no checkpoint at"),
    (["--queue-size", "600"], "--queue-size 600 plus the window 16 exceeds the training set (512 pairs)"),
    (["--batch-size", "400"], "is larger than the training set (512 pairs)"),
    (["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
    (["--steps", "0"], "--steps must be positive, got 0"),
])
def test_start_up_errors(tmp_path, extra, message):
    proc = run("train.py", "--out", str(tmp_path / "x"), *SMALL, *extra, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_existing_checkpoint_and_changed_settings_are_refused(reference_run, tmp_path):
    ref, _ = reference_run
    proc = run("train.py", "--out", str(ref), *SMALL, check=False)
    assert proc.returncode == 2 and "exists: add --resume" in proc.stderr
    proc = run("train.py", "--out", str(ref), *SMALL, "--lr", "0.5", "--resume", check=False)
    assert proc.returncode == 2 and "--lr 0.0005 (saved) vs 0.5" in proc.stderr


def test_bad_manifest_is_refused_before_training(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("image,report\nx.png,hello\n")
    proc = run("train.py", "--out", str(tmp_path / "x"), *SMALL, "--train-manifest", str(csv), check=False)
    assert proc.returncode == 2
    assert "bad.csv" in proc.stderr and "text" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "ckpt.pt").exists()
