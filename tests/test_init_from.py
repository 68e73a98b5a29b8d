"""train.py --init-from: a new run that starts from another run's weights and tokenizer, with a
fresh optimizer and schedule; what does not fit is refused in one line."""

import csv
import json

import pytest
import torch

from plumbing.checkpoint import load_checkpoint
from test_train import SMALL, load, run

# SMALL without a queue (a CLIP source has none) and without quick checks
BASE = [a for a in SMALL]
BASE[BASE.index("--queue-size") + 1] = "0"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """An MSD run of 6 steps: the run a new one starts from."""
    root = tmp_path_factory.mktemp("sources")
    run("train.py", "--out", str(root / "msd"), *BASE)
    return root


def embeddings(folder, teacher=False):
    model, tok, _ = load_checkpoint(str(folder), use_teacher=teacher)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 32, 32, generator=g)
    tokens = torch.randint(4, model.cfg.vocab_size, (4, 12), generator=g)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_zero_steps_from_a_run_keep_its_student_teacher_and_tokenizer(sources, tmp_path):
    out = tmp_path / "new"
    proc = run("train.py", "--out", str(out), *BASE, "--init-from", str(sources / "msd"), "--steps", "0")
    assert f"started from {sources / 'msd' / 'ckpt.pt'}: its student and teacher" in proc.stdout
    assert "init: the source's tokenizer on these reports:" in proc.stdout
    for teacher in (False, True):
        for a, b in zip(embeddings(out, teacher), embeddings(sources / "msd", teacher)):
            assert torch.equal(a, b)
    assert (out / "tokenizer.json").read_text() == (sources / "msd" / "tokenizer.json").read_text()
    ckpt = load(out / "ckpt.pt")
    assert ckpt["step"] == 0 and ckpt["config"]["train"]["init_from"] == str(sources / "msd")
    assert json.loads((out / "eval.json").read_text())["zero_shot"]["accuracy"] >= 0


@pytest.mark.slow   # two more train.py runs: `pytest -m slow`, CI's second step
def test_a_new_run_trains_with_a_fresh_optimizer_and_resumes_without_the_option(sources, tmp_path):
    out = tmp_path / "more"
    run("train.py", "--out", str(out), *BASE, "--init-from", str(sources / "msd"), "--interrupt-at", "2")
    ckpt = load(out / "ckpt.pt")
    # a fresh optimizer: AdamW's step count is this run's 2, not the source's 6 + 2
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {2}
    run("train.py", "--out", str(out), *BASE, "--resume")          # --init-from is not repeated
    assert load(out / "ckpt.pt")["step"] == 6


@pytest.mark.slow   # two more train.py runs: `pytest -m slow`, CI's second step
def test_msd_from_a_clip_run_gets_a_teacher_equal_to_the_student(tmp_path):
    source, out = tmp_path / "clip", tmp_path / "from-clip"
    run("train.py", "--out", str(source), *BASE, "--method", "clip")
    proc = run("train.py", "--out", str(out), *BASE, "--init-from", str(source), "--steps", "0")
    assert "its student, the teacher a copy of the student" in proc.stdout
    ckpt = load(out / "ckpt.pt")
    for key, value in ckpt["student"].items():
        assert torch.equal(ckpt["teacher"][key], value), key


@pytest.mark.parametrize("extra, message", [
    (["--preset", "small", "--image-size", "32"],
     "the checkpoint holds a 'tiny' preset model, this run builds --preset small: patch_size 8 "
     "(checkpoint) vs 16"),
    (["--stem", "patch"], "this run builds --preset tiny: stem conv (checkpoint) vs patch"),
    (["--resume"], "--init-from starts a new run from another run's weights, --resume continues"),
])
def test_what_does_not_fit_is_one_line(sources, tmp_path, extra, message):
    proc = run("train.py", "--out", str(tmp_path / "x"), *BASE, "--init-from", str(sources / "msd"),
               *extra, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_a_missing_source_and_a_source_without_tokenizer_are_one_line(sources, tmp_path):
    proc = run("train.py", "--out", str(tmp_path / "x"), *BASE, "--init-from", str(tmp_path / "none"),
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"--init-from {tmp_path / 'none'}: no checkpoint at {tmp_path / 'none'}")
    lone = tmp_path / "lone.pt"
    lone.write_bytes((sources / "msd" / "ckpt.pt").read_bytes())
    proc = run("train.py", "--out", str(tmp_path / "y"), *BASE, "--init-from", str(lone), check=False)
    assert proc.returncode == 2 and "tokenizer.json is missing" in proc.stderr


def test_zero_steps_need_init_from(capsys):
    import train
    with pytest.raises(SystemExit):
        train.get_args(["--steps", "0"])
    assert "0 is for --init-from" in capsys.readouterr().err


def _manifest(folder, texts):
    """A manifest of 32 exported synthetic images with the given reports (cycled)."""
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:32]
    path = folder / f"m{len(list(folder.glob('m*.csv')))}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerows([folder / r["image"], texts[i % len(texts)] if texts else r["text"]]
                    for i, r in enumerate(rows))
    return path


@pytest.mark.slow   # two more train.py runs: `pytest -m slow`, CI's second step
def test_a_run_on_a_manifest_starts_from_the_synthetic_run_and_evaluates(sources, tmp_path):
    run("data.py", "export", "--out", str(tmp_path), "--n", "32", "--image-size", "32")
    pairs = _manifest(tmp_path, None)
    out = tmp_path / "hospital"
    proc = run("train.py", "--out", str(out), *BASE, "--train-manifest", str(pairs), "--steps", "2",
               "--init-from", str(sources / "msd"), "--retrieval-manifest", str(pairs))
    assert "retrieval" in json.loads((out / "eval.json").read_text())
    assert "0.00% of tokens [UNK]" in proc.stdout
    # reports in an alphabet the source's reports never used: most characters are [UNK]
    greek = _manifest(tmp_path, ["Πλευριτική συλλογή αριστερά.", "Χωρίς ευρήματα."])
    proc = run("train.py", "--out", str(tmp_path / "greek"), *BASE, "--train-manifest", str(greek),
               "--init-from", str(sources / "msd"), check=False)
    assert proc.returncode == 2
    assert "of this data's tokens are [UNK] under" in proc.stderr.strip().splitlines()[-1]
