"""train.py end to end: a short run, eval.py on its checkpoint, exact resume after Ctrl-C or a kill,
torchrun against one process, a non-finite loss, and the start-up errors."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from synthetic.dataset import ZERO_SHOT_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run small enough for seconds on 2 CPU cores: 32 px images, 512 pairs, windows of 2 x 8.
SMALL = ["--image-size", "32", "--n-train", "512", "--batch-size", "8", "--accum-steps", "2",
         "--queue-size", "64", "--steps", "6", "--warmup-steps", "2", "--alpha-warmup", "2",
         "--vocab-size", "300", "--log-every", "1", "--save-every", "2", "--eval-every", "3",
         "--eval-per-class", "10", "--eval-retrieval", "40", "--eval-grounding", "4", "--data-cache", "",
         "--workers", "1"]
# SMALL with --queue-size auto, which 512 pairs and a window of 16 resolve to 64 (512 / 8)
DEFAULT_QUEUE = SMALL[:SMALL.index("--queue-size") + 1] + ["auto"] + SMALL[SMALL.index("--queue-size") + 2:]


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
    # with no manifest, train.py's own table is the synthetic benchmark, and eval.json says so
    assert json.loads((out / "eval.json").read_text())["evaluated_on"] == {
        "zero_shot": {"source": "synthetic", "images": 5 * 10, "classes": ZERO_SHOT_CLASSES, "seed": 2002},
        "retrieval": {"source": "synthetic", "pairs": 40, "seed": 2002},
        "grounding": {"source": "synthetic", "phrases": 5 * 4, "seed": 4004}}
    ckpt = load(out / "ckpt.pt")
    assert ckpt["step"] == 6 and ckpt["samples_seen"] == 6 * 16
    assert len(ckpt["queue"]["ids"]) == 64 and int(ckpt["queue"]["filled"]) == 64
    # by default the queue joins after the 2 warm-up steps: 4 windows of 16 went in (from step 0,
    # 6 windows would have left the write pointer at 96 mod 64 = 32)
    assert "queue 64 from step 2" in proc.stdout and ckpt["config"]["train"]["queue_start"] == 2
    assert int(ckpt["queue"]["ptr"]) == 0
    # eval.py on the checkpoint folder
    out_json = tmp_path / "r.json"
    run("eval.py", "--checkpoint", str(out), "--json", str(out_json), "--n-per-class", "20",
        "--n-retrieval", "40")
    res = json.loads(out_json.read_text())
    assert set(res) == {"zero_shot", "few_shot", "retrieval", "grounding", "ci95", "evaluated_on"}
    assert set(res["retrieval"]) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    values = [*res["zero_shot"].values(), *res["few_shot"].values(), *res["retrieval"].values()]
    assert all(0.0 <= v <= 1.0 for v in values)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """64 synthetic pairs written as 32 px PNGs and a manifest, as a user's data would be."""
    folder = tmp_path_factory.mktemp("export")
    run("data.py", "export", "--out", str(folder), "--n", "64", "--image-size", "32")
    return folder


def test_train_on_a_manifest_without_evaluation_sets_skips_the_synthetic_benchmark(exported, tmp_path):
    out = tmp_path / "run"
    proc = run("train.py", "--out", str(out), "--train-manifest", str(exported / "manifest.csv"),
               *SMALL, "--queue-size", "16", "--steps", "2", "--eval-every", "1")
    assert "64 pairs from" in proc.stdout
    assert load(out / "ckpt.pt")["step"] == 2
    assert ("no --eval-manifest/--retrieval-manifest/--grounding-manifest given: skipping "
            "evaluation on the synthetic benchmark, which says nothing about your data") in proc.stdout
    # no quick check at step 1, no final table, no eval.json: no synthetic number anywhere
    assert "rendering" not in proc.stdout
    assert "zero-shot" not in proc.stdout and "Recall@" not in proc.stdout
    assert not (out / "eval.json").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("loss" in r for r in rows)


def test_train_on_a_manifest_evaluates_on_the_users_sets(exported, tmp_path):
    """--eval-manifest/--prompts/--retrieval-manifest feed the quick checks and the final table,
    and eval.json names the user's classes and pairs, not the synthetic benchmark's."""
    classes = ["fracture", "lung opacity", "no finding"]          # none of them synthetic
    images = [f"images/{i:06d}.png" for i in range(12)]
    (tmp_path / "classes.csv").write_text(
        "image,label\n" + "".join(f"{exported / im},{classes[i % 3]}\n" for i, im in enumerate(images)))
    (tmp_path / "prompts.json").write_text(json.dumps(
        {"fracture": ["A rib fracture."], "lung opacity": ["An opacity in the lung."],
         "no finding": ["No acute cardiopulmonary process.", "The lungs are clear."]}))
    # retrieval pairs with a split column: only its 8 test rows are evaluated
    with open(exported / "manifest.csv", newline="") as f:
        pairs = list(csv.DictReader(f))[:12]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "split"])
        w.writerows([exported / p["image"], p["text"], "test" if i < 8 else "train"]
                    for i, p in enumerate(pairs))
    out = tmp_path / "run"
    proc = run("train.py", "--out", str(out), "--train-manifest", str(exported / "manifest.csv"),
               *DEFAULT_QUEUE, "--steps", "2", "--eval-every", "1",
               "--eval-manifest", str(tmp_path / "classes.csv"), "--prompts", str(tmp_path / "prompts.json"),
               "--retrieval-manifest", str(tmp_path / "pairs.csv"))
    # 64 pairs: 64 / 8 = 8 is below one window of 16, so auto is no queue
    assert "queue 0 (auto: <= n/8 and 2048, a multiple of the window)" in proc.stdout
    assert "step     1 quick zero-shot" in proc.stdout
    assert "evaluating zero-shot on 12 images, 3 classes" in proc.stdout
    assert "rendering" not in proc.stdout and "skipping evaluation" not in proc.stdout
    results = json.loads((out / "eval.json").read_text())
    assert results["evaluated_on"] == {
        "zero_shot": {"source": str(tmp_path / "classes.csv"), "images": 12, "classes": classes},
        "retrieval": {"source": str(tmp_path / "pairs.csv"), "pairs": 8}}
    assert set(results) == {"zero_shot", "few_shot", "retrieval", "ci95", "evaluated_on"}
    assert list(results["few_shot"]) == ["1", "2"]            # 4 images per class: k < 4 only
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "zero_shot_accuracy" in r] == [1]


def test_an_evaluation_label_without_prompts_is_refused_before_training(exported, tmp_path):
    (tmp_path / "classes.csv").write_text(f"image,label\n{exported / 'images/000000.png'},fracture\n"
                                          f"{exported / 'images/000001.png'},pneumothorax\n")
    (tmp_path / "prompts.json").write_text(json.dumps({"fracture": ["A rib fracture."],
                                                       "edema": ["Pulmonary edema."]}))
    proc = run("train.py", "--out", str(tmp_path / "x"), "--train-manifest", str(exported / "manifest.csv"),
               *SMALL, "--queue-size", "16", "--eval-manifest", str(tmp_path / "classes.csv"),
               "--prompts", str(tmp_path / "prompts.json"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'classes.csv'}: row 2 (line 3), column 'label': unknown class 'pneumothorax'" in proc.stderr
    assert not (tmp_path / "x" / "ckpt.pt").exists()


def test_a_manifest_smaller_than_one_window_is_refused(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(torch.full((20, 20), 40 * i, dtype=torch.uint8).numpy()).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "tiny.csv").write_text(
        "image,text\n" + "".join(f"img/{i}.png,Report number {i}.\n" for i in range(3)))
    proc = run("train.py", "--out", str(tmp_path / "x"), *DEFAULT_QUEUE,
               "--train-manifest", str(tmp_path / "tiny.csv"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ("the window (1 rank(s) x 2 x 8 = 16 pairs) is larger than the training set (3 pairs)"
            in proc.stderr)
    assert not (tmp_path / "x" / "ckpt.pt").exists()


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
def test_resume_from_a_cached_manifest_matches_a_run_from_memory(tmp_path):
    """A manifest decoded into memory, against the same manifest memory-mapped from its cache by a
    run killed after step 3 and resumed (from the step-2 checkpoint): bit for bit the same."""
    sys.path.insert(0, ROOT)
    from synthetic import dataset as synthetic
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


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
def test_patch_stem_and_class_token_train_and_their_checkpoint_evaluates(tmp_path):
    """--stem patch --pool cls --patch-size 4 (ViT's own embedding and pooling, a finer grid than
    the preset's): the checkpoint holds the single p x p convolution and a class token, and eval.py
    rebuilds that model from the saved config (the default conv-stem, max-pooled model with 8 x 8
    patches could not load these weights)."""
    out = tmp_path / "patch"
    run("train.py", "--out", str(out), *SMALL, "--stem", "patch", "--pool", "cls", "--patch-size", "4",
        "--steps", "1", "--eval-every", "0")
    ckpt = load(out / "ckpt.pt")
    student = ckpt["student"]
    assert student["visual.patch_embed.weight"].shape == (128, 1, 4, 4)   # tiny: width 128, p = 4
    assert student["visual.pos_embed"].shape[1] == 1 + (32 // 4) ** 2     # the class token + 8 x 8
    assert not any(k.startswith("visual.patch_embed.layers") for k in student)
    assert student["visual.cls_token"].shape == (1, 1, 128)
    run("eval.py", "--checkpoint", str(out), "--json", str(tmp_path / "r.json"), "--n-per-class", "4",
        "--n-retrieval", "10")
    assert set(json.loads((tmp_path / "r.json").read_text())) == {"zero_shot", "few_shot", "retrieval",
                                                                 "grounding", "ci95", "evaluated_on"}


@pytest.mark.parametrize("how", ["interrupt", pytest.param("kill", marks=pytest.mark.slow)])  # kill: CI's 2nd step
def test_resume_is_exact(reference_run, tmp_path, how):
    """Ctrl-C after step 3 (saves at 3), or SIGKILL after step 3 (the periodic checkpoint is at 2):
    resuming with the same command plus --resume ends bit for bit where the uninterrupted run did.
    The Ctrl-C run has --queue-size auto, which 512 pairs and a window of 16 resolve to the
    reference's 64 and which is saved resolved: a resume with auto continues too."""
    ref, _ = reference_run
    out = tmp_path / how
    args = DEFAULT_QUEUE if how == "interrupt" else SMALL
    first = run("train.py", "--out", str(out), *args, f"--{how}-at", "3", check=False)
    if how == "interrupt":
        assert first.returncode == 0, first.stderr
        assert "stop requested" in first.stdout and "--resume" in first.stdout
        assert "queue 64 (auto: <= n/8 and 2048, a multiple of the window)" in first.stdout
        assert load(out / "ckpt.pt")["step"] == 3
        assert load(out / "ckpt.pt")["config"]["train"]["queue_size"] == 64
    else:
        assert first.returncode == -9
        assert load(out / "ckpt.pt")["step"] == 2
    # the same command plus --resume (a real kill does not strike twice: that flag is dropped)
    again = [f"--{how}-at", "3"] if how == "interrupt" else []
    run("train.py", "--out", str(out), *args, *again, "--resume")
    a, b = load(ref / "ckpt.pt"), load(out / "ckpt.pt")
    for key in ("student", "teacher", "queue", "optimizer", "step", "rng"):
        assert_same_tensors(a[key], b[key], key)
    # the metrics file tells the same story once, with no rows from the lost steps repeated
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == [r["loss"] for r in ref_rows if "loss" in r]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_on_a_truncated_or_garbage_checkpoint_is_one_clear_line(reference_run, tmp_path, damage):
    ref, _ = reference_run
    good = (ref / "ckpt.pt").read_bytes()
    out = tmp_path / damage
    out.mkdir()
    (out / "ckpt.pt").write_bytes(good[:len(good) // 2] if damage == "truncated"
                                  else os.urandom(len(good) // 2))
    (out / "tokenizer.json").write_bytes((ref / "tokenizer.json").read_bytes())
    proc = run("train.py", "--out", str(out), *SMALL, "--resume", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    what = "is truncated" if damage == "truncated" else "is not a checkpoint of this project"
    assert last.startswith(f"train.py: error: --resume: checkpoint {out / 'ckpt.pt'} {what}")
    assert last.endswith("delete it to start the run again from step 0, or use another --out")
    assert "weights_only" not in proc.stderr


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
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
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("model: ") and "preset" in line]
    assert "2 process(es)" in proc.stdout and len(summaries) == 1, summaries   # rank 0 alone logs


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
    (["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--queue-start", "-1"], "--queue-start must be >= 0, got -1"),
    (["--warmup-steps=-1"], "--warmup-steps must be >= 0, got -1"),
    (["--momentum-half-life", "0"], "--momentum-half-life must be a positive fraction of the run, got 0.0"),
    (["--eval-grounding", "0"], "--eval-grounding must be >= 1, got 0"),
])
def test_argument_errors(tmp_path, capsys, extra, message):
    """Mistakes in the arguments alone: refused by the parser (exit 2, one line) before anything
    runs, so they are checked in this process; the ones below need the run's start-up."""
    import train
    with pytest.raises(SystemExit) as stop:
        train.get_args(["--out", str(tmp_path / "x"), *SMALL, *extra])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"train.py: error: {message}")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,message", [
    (["--resume"], "--resume: no checkpoint at"),
    (["--queue-size", "600"], "--queue-size 600 plus the window 16 exceeds the training set (512 pairs)"),
    (["--batch-size", "400"], "is larger than the training set (512 pairs)"),
    (["--eval-manifest", "classes.csv"], "--eval-manifest classes.csv needs --prompts JSON"),
    (["--prompts", "p.json"], "--prompts p.json is only used with --eval-manifest"),
    (["--retrieval-manifest", "no-such.csv"], "--retrieval-manifest file not found: no-such.csv"),
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
    assert proc.returncode == 2 and "--lr 0.00025 (saved) vs 0.5" in proc.stderr


def test_bad_manifest_is_refused_before_training(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("image,report\nx.png,hello\n")
    proc = run("train.py", "--out", str(tmp_path / "x"), *SMALL, "--train-manifest", str(csv), check=False)
    assert proc.returncode == 2
    assert "bad.csv" in proc.stderr and "text" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "ckpt.pt").exists()


def test_queue_start_and_momentum_half_life(tmp_path):
    """--queue-start 3: the queue stays empty (and out of the bank) for steps 0-2, so after 4 steps
    it holds one window, not four; --momentum-half-life 0.5 of 4 steps: m = 0.5^(1/2) every step."""
    out = tmp_path / "remedies"
    proc = run("train.py", "--out", str(out), *SMALL, "--steps", "4", "--eval-every", "0",
               "--queue-start", "3", "--momentum-half-life", "0.5")
    assert "queue 64 from step 3" in proc.stdout and "half-life 0.5 of the run" in proc.stdout
    queue = load(out / "ckpt.pt")["queue"]
    assert int(queue["filled"]) == 16 and int(queue["ptr"]) == 16          # one window of 2 x 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["momentum"] for r in rows if "loss" in r] == [pytest.approx(0.5 ** 0.5, rel=1e-12)] * 4


# ---- small promises of the command line ------------------------------------------------------------

@pytest.mark.slow   # two runs of train.py: `pytest -m slow`, CI's second step
def test_save_every_0_saves_only_at_the_end(tmp_path):
    """--save-every 0 means "only at the end" (as --eval-every 0 means "off"): a run killed before
    the end has no checkpoint, one that ends has the last step's."""
    out = tmp_path / "x"
    common = [*SMALL, "--steps", "3", "--save-every", "0", "--eval-every", "0"]
    killed = run("train.py", "--out", str(out), *common, "--kill-at", "2", check=False)
    assert killed.returncode == -9 and not (out / "ckpt.pt").exists()
    shutil.rmtree(out)
    run("train.py", "--out", str(out), *common)
    assert load(out / "ckpt.pt")["step"] == 3


def test_a_device_that_is_not_here_is_refused_before_the_data(tmp_path):
    """On this CPU-only machine --device cuda is one line, before anything is rendered or written."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run("train.py", "--out", str(tmp_path / "x"), *SMALL, "--device", "cuda", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train.py: error: --device cuda: no usable CUDA device here")
    assert "rendering" not in proc.stdout and not (tmp_path / "x").exists()


def test_resume_on_another_device_or_precision_says_so(reference_run, tmp_path):
    """The device and --precision auto may change between a run and its --resume (a run moved
    from a GPU to a laptop); the resume says that it will not be bit for bit the same run."""
    ref, _ = reference_run
    out = tmp_path / "moved"
    shutil.copytree(ref, out)
    ckpt = load(out / "ckpt.pt")
    assert (ckpt["config"]["device_type"], ckpt["config"]["precision"]) == ("cpu", "fp32")
    ckpt["config"].update(device_type="cuda", precision="bf16")
    ckpt["step"] = 5
    torch.save(ckpt, out / "ckpt.pt")
    proc = run("train.py", "--out", str(out), *SMALL, "--resume")
    assert ("note: this run computed on cuda in bf16 and continues on cpu in fp32: the same run, "
            "but not bit for bit what it would have computed") in proc.stdout


# ---- --report-noise: noisy synthetic training reports ----------------------------------------------


@pytest.mark.slow   # several runs of train.py: `pytest -m slow`, CI's second step
def test_report_noise_is_saved_and_a_resume_with_another_is_refused(tmp_path):
    out = tmp_path / "noisy"
    proc = run("train.py", "--out", str(out), *SMALL, "--report-noise", "0.3", "--steps", "2",
               "--eval-every", "0", "--eval-per-class", "2", "--eval-retrieval", "10")
    assert "at 32 px, reports with noise 0.3 (cached in" in proc.stdout
    assert "data: report noise 0.3: " in proc.stdout and "reports changed" in proc.stdout
    assert load(out / "ckpt.pt")["config"]["train"]["report_noise"] == 0.3
    proc = run("train.py", "--out", str(out), *SMALL, "--steps", "2", "--eval-every", "0",
               "--eval-per-class", "2", "--eval-retrieval", "10", "--resume", check=False)
    assert proc.returncode == 2 and "--report-noise 0.3 (saved) vs 0.0" in proc.stderr
    assert "rendering" not in proc.stdout                   # refused before any data is made


def test_the_grounding_default_is_the_benchmark_size():
    """train.py's --eval-grounding default is eval.py's: the synthetic benchmark's 5 x 50 studies."""
    import train
    from evaluation.sets import GROUNDING_PER_CLASS
    assert train.get_args([])[1].eval_grounding == GROUNDING_PER_CLASS == 50
