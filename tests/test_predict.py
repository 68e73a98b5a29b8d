"""Using a trained model (evaluation/predict.py): eval.py --image's probabilities are zero-shot
evaluation's, --json writes what it prints, a bad image or checkpoint is one line, --show-grounding
draws a picture of the size --help states, and the README's Python example runs as it is."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

import eval as ev
from evaluation.predict import load_images, predict
from evaluation.protocols import embed_images, zero_shot
from evaluation.sets import read_benchmark
from plumbing.checkpoint import load_checkpoint
from synthetic.dataset import CLASS_PROMPTS, export_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["pleural effusion", "pneumothorax", "no finding"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few-step train.py run on 32-px images (ckpt.pt, tokenizer.json), and 5 synthetic studies
    exported as 64-px PNGs (so that they are resized, as a user's would be)."""
    out = tmp_path_factory.mktemp("run")
    subprocess.run([sys.executable, "train.py", "--out", str(out), "--image-size", "32",
                    "--n-train", "256", "--batch-size", "8", "--accum-steps", "2", "--queue-size", "32",
                    "--steps", "4", "--warmup-steps", "2", "--alpha-warmup", "2", "--vocab-size", "300",
                    "--log-every", "1", "--eval-every", "0", "--eval-per-class", "8",
                    "--eval-retrieval", "20", "--data-cache", "", "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    export = tmp_path_factory.mktemp("images")
    export_synthetic(str(export), 5, 64)
    return out, sorted(str(p) for p in (export / "images").glob("*.png"))


def ask(*args, capsys):
    """eval.py's main in this process (a traceback would surface as an exception here): stdout."""
    ev.main(["--device", "cpu", *map(str, args)])
    return capsys.readouterr().out


def printed_probabilities(out, classes):
    """{image path: [p per class]} from what eval.py --image prints, checking each header line."""
    lines, found = out.splitlines(), {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"(\S+): (.+) \((\d\.\d{3})\)", line)
        if m:
            rows = [re.fullmatch(r"  (\d\.\d{3})  (.+)", row) for row in lines[i + 1:i + 1 + len(classes)]]
            assert [r.group(2) for r in rows] == classes, lines[i:i + 1 + len(classes)]
            probs = [float(r.group(1)) for r in rows]
            assert m.group(2) == classes[probs.index(max(probs))] and float(m.group(3)) == max(probs)
            found[m.group(1)] = probs
    return found


# -----------------------------------------------------------------------------
# The numbers


@pytest.mark.parametrize("how", ["classes", "prompts"])
def test_image_probabilities_are_zero_shot_evaluations(trained, tmp_path, capsys, how):
    """--classes (each name its prompt) or --prompts: the probabilities equal eval.py's zero-shot
    path (read_benchmark, embed_images, zero_shot) on a manifest of the same images, and sum to 1.
    The manifest has two rows of two classes: AUC-ROC refuses a one-image or one-class set."""
    run, images = trained
    x, y = images[:2]
    if how == "classes":
        prompts, option = {c: [c] for c in CLASSES}, ["--classes", ",".join(CLASSES)]
    else:
        prompts = {c: CLASS_PROMPTS[c][:3] for c in ("pleural effusion", "edema", "cardiomegaly")}
        (tmp_path / "prompts.json").write_text(json.dumps(prompts))
        option = ["--prompts", tmp_path / "prompts.json"]
    classes = list(prompts)
    out = ask("--checkpoint", run, "--image", x, y, *option, "--json", tmp_path / "a.json",
              capsys=capsys)
    answers = json.loads((tmp_path / "a.json").read_text())
    got = torch.tensor([[a["probabilities"][c] for c in classes] for a in answers["images"]])

    (tmp_path / "m.csv").write_text(f"image,label\n{x},{classes[0]}\n{y},{classes[1]}\n")
    model, tokenizer, _ = load_checkpoint(str(run))
    zs, _ = read_benchmark(str(tmp_path / "m.csv"), prompts, None, model.cfg.image_size,
                           model.cfg.in_channels, log=lambda *a, **k: None)
    features = embed_images(model, zs["images"], "cpu")
    want = zero_shot(model, tokenizer, zs["images"], zs["labels"], classes, prompts, "cpu",
                     image_features=features)["probs"]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(1), torch.ones(2))
    assert answers["prompts"] == prompts and [a["image"] for a in answers["images"]] == [x, y]
    assert printed_probabilities(out, classes) == {x: [round(p, 3) for p in got[0].tolist()],
                                                   y: [round(p, 3) for p in got[1].tolist()]}
    assert f"s = exp(logit_scale) = {float(model.logit_scale.detach().exp()):.2f}" in out


def test_json_writes_what_is_printed(trained, tmp_path, capsys):
    run, images = trained
    out = ask("--checkpoint", run, "--image", *images, "--classes", ", ".join(CLASSES), "--json",
              tmp_path / "a.json", capsys=capsys)
    answers = json.loads((tmp_path / "a.json").read_text())
    printed = printed_probabilities(out, CLASSES)
    assert list(printed) == images == [a["image"] for a in answers["images"]]
    for a in answers["images"]:
        assert printed[a["image"]] == [round(a["probabilities"][c], 3) for c in CLASSES]
        assert a["top"] == max(CLASSES, key=a["probabilities"].get)
    assert f"wrote {tmp_path / 'a.json'}" in out and "rendering" not in out   # no benchmark


def test_predict_takes_names_or_prompt_ensembles(trained):
    run, images = trained
    model, tokenizer, _ = load_checkpoint(str(run))
    x = load_images(images[:3], model.cfg.image_size, model.cfg.in_channels)
    assert x.shape == (3, model.cfg.in_channels, 32, 32) and x.dtype == torch.uint8
    by_name = predict(model, tokenizer, x, CLASSES)
    torch.testing.assert_close(by_name, predict(model, tokenizer, x, {c: [c] for c in CLASSES}))
    assert by_name.shape == (3, 3) and torch.allclose(by_name.sum(1), torch.ones(3))


# -----------------------------------------------------------------------------
# Mistakes: one line each


@pytest.mark.parametrize("mistake", ["missing image", "text file as image", "unknown checkpoint"])
def test_bad_image_or_checkpoint_is_one_line(trained, tmp_path, capsys, mistake):
    run, images = trained
    (tmp_path / "notes.txt").write_text("not a picture\n")
    image, checkpoint = {"missing image": (tmp_path / "x.png", run),
                         "text file as image": (tmp_path / "notes.txt", run),
                         "unknown checkpoint": (images[0], tmp_path / "no-run")}[mistake]
    with pytest.raises(SystemExit) as info:
        ask("--checkpoint", checkpoint, "--image", image, "--classes", "a,b", capsys=capsys)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    named = image if mistake != "unknown checkpoint" else checkpoint
    assert err.startswith("eval.py: error: ") and str(named) in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--image", "x.png"], "--image needs a question"),
    (["--classes", "a,b"], "--classes asks about your own images"),
    (["--image", "x.png", "--classes", "a,b", "--prompts", "p.json"], "--classes and --prompts"),
    (["--image", "x.png", "--classes", "a,b", "--eval-manifest", "m.csv"], "--eval-manifest is an"),
    (["--image", "x.png", "--text", "effusion"], "give --show-grounding PNG"),
    (["--image", "x.png", "--classes", "a"], "at least two class names"),
])
def test_contradictions_are_refused_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        ask("--checkpoint", tmp_path / "no-run", *args, capsys=capsys)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


# -----------------------------------------------------------------------------
# The grounding picture


def test_show_grounding_draws_the_sentence_over_each_image(trained, tmp_path, capsys):
    """5 images: two rows of the cells --help states (128 x 186 px, 4 a row)."""
    run, images = trained
    picture = tmp_path / "map.png"
    out = ask("--checkpoint", run, "--image", *images, "--text", "left pleural effusion",
              "--show-grounding", picture, capsys=capsys)
    with Image.open(picture) as im:
        assert im.size == (4 * 128, 2 * 186)
    assert f"wrote {picture} (512x372 px" in out
    assert not re.search(r"^  \d\.\d{3}  ", out, re.M)                  # no probabilities asked
    with pytest.raises(SystemExit):
        ev.parse_args(["--help"])
    assert "cells of 128 x 186 px, 4 a row" in " ".join(capsys.readouterr().out.split())


# -----------------------------------------------------------------------------
# The README's example


def readme_block(text):
    """The first ```python block of the section "## Use a trained model", or None."""
    m = re.search(r"^## Use a trained model\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    block = m and re.search(r"^```python\n(.*?)^```", m.group(1), flags=re.M | re.S)
    return block.group(1) if block else None


def run_block(code, trained, tmp_path, monkeypatch, capsys):
    """Run the block as it is, in a folder where out/ is a trained run and x.png an image: it
    prints predict()'s probabilities, then the same computed step by step."""
    run, images = trained
    shutil.copytree(run, tmp_path / "out")
    shutil.copy(images[0], tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    names = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), names)
    printed = [[float(v) for v in re.findall(r"\d\.\d+", line)]
               for line in capsys.readouterr().out.strip().splitlines()]
    model, tokenizer, _ = load_checkpoint("out")
    x = load_images(["x.png"], model.cfg.image_size, model.cfg.in_channels)
    want = predict(model, tokenizer, x, names["texts"])[0].tolist()
    assert len(printed) == 2 and abs(sum(want) - 1) < 1e-5
    for line in printed:                       # printed to 4 decimals
        assert line == pytest.approx(want, abs=1.5e-4)


def test_readme_example_runs(trained, tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        code = readme_block(f.read())
    assert code is not None, "README.md has no ```python block under '## Use a trained model'"
    run_block(code, trained, tmp_path, monkeypatch, capsys)
