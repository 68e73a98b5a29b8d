"""The README's pictures: captions keep the spaces between their words, plot.py draws each point
where its axes say, and every picture command still draws a picture of the size of the one in
docs/ that the README shows."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tools import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each picture in docs/: the README's command that draws it (`out` is a trained run's folder), and
# its size in px: 3 x 3 tiles of 192 x (192 + 96); 5 classes x 4 cells of 160 x (160 + 4 lines
# of 13 + 6); two panels of 400 x 280.
PICTURES = {
    "docs/samples.png": ("python data.py show --out docs/samples.png --n 9 --image-size 64",
                         (576, 864)),
    "docs/predictions.png": ("python eval.py --checkpoint out --show docs/predictions.png",
                             (640, 1090)),
    "docs/curve.png": ("python -m tools.plot out --out docs/curve.png", (800, 280)),
    # 5 grounding classes x 6 cells (3 studies, twice: the report's sentence, then the finding
    # alone) of 128 x (128 + 4 lines of 13 + 6)
    "docs/grounding.png": ("python eval.py --checkpoint out --show-grounding docs/grounding.png",
                           (768, 930)),
}


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


# ------------------------------------------------------------------ captions

WORDS = "FINDINGS: Heart size is normal. IMPRESSION: No acute cardiopulmonary process; CT recommended."


def blank_runs(words, font):
    """Widths in px of the ink-free column runs between the first and last inked column, when
    draw_words draws words (white on black)."""
    image = Image.new("L", (int(plot.words_width(words, font)) + 8, 24), 0)
    plot.draw_words(ImageDraw.Draw(image), (4, 4), words, font, 255)
    ink = (np.asarray(image) > 40).any(axis=0)
    cols = np.nonzero(ink)[0]
    runs, width = [], 0
    for inked in ink[cols[0]:cols[-1] + 1]:
        if inked and width:
            runs.append(width)
        width = 0 if inked else width + 1
    return runs


def test_caption_words_are_visibly_apart():
    """Between two words there is a gap at least 2 px wider than any gap between two letters of a
    word. Drawn as one string, the built-in font's 2-px space fails this (it reads "Noacute")."""
    font = plot.caption_font()
    words = WORDS.split()
    inside = max(max(blank_runs([w], font), default=0) for w in words)
    gaps = [r for r in blank_runs(words, font) if r >= inside + 2]
    assert len(gaps) == len(words) - 1, (inside, blank_runs(words, font))


def test_wrap_words_keeps_every_word_and_fills_lines():
    font = plot.caption_font()
    lines = plot.wrap_words(WORDS + " Supercalifragilisticexpialidocious-opacity", font, 120)
    assert [w for line in lines for w in line] == (WORDS + " Supercalifragilisticexpialidocious-opacity").split()
    for line, after in zip(lines, lines[1:] + [None]):
        assert len(line) == 1 or plot.words_width(line, font) <= 120      # fits, or one long word
        if after:                                                      # greedy: the next word did not fit
            assert plot.words_width(line + after[:1], font) > 120
    assert lines[-1] == ["Supercalifragilisticexpialidocious-opacity"]        # wider than 120 px alone


# ------------------------------------------------------------------ the training curve

def test_ticks_are_round_and_cover_the_range():
    assert plot.ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert plot.ticks(0, 600) == [0, 200, 400, 600]
    assert plot.ticks(7.6, 7.9) == [7.6, 7.7, 7.8, 7.9]
    assert plot.ticks(4.37, 7.56) == [4, 5, 6, 7, 8]


def test_curve_puts_each_point_where_the_axes_say(tmp_path):
    rows = [{"step": s, "loss": 8.0 - s / 100} for s in (10, 20, 30, 40)]
    rows.insert(2, {"step": 20, "zero_shot_accuracy": 0.6, "zero_shot_auc": 0.8})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.json").write_text(json.dumps({"zero_shot": {"accuracy": 0.9, "auc": 0.95}}))
    png = tmp_path / "c.png"
    assert plot.draw_curves(str(tmp_path), str(png)) == (2 * plot.PANEL_W, plot.PANEL_H)
    image = Image.open(png).convert("RGB")
    # The plot area of a panel spans LEFT..PANEL_W-RIGHT and TOP..PANEL_H-BOTTOM; the axes run over
    # the round ticks: steps 0..40, loss 7.6..7.9 (the values' range), accuracy 0..1.
    w, h = plot.PANEL_W - plot.LEFT - plot.RIGHT, plot.PANEL_H - plot.TOP - plot.BOTTOM
    def at(panel, step, value, lo, hi):
        return (panel * plot.PANEL_W + plot.LEFT + step / 40 * w,
                plot.TOP + h - (value - lo) / (hi - lo) * h)
    for (x, y), colour in [(at(0, 10, 7.9, 7.6, 7.9), plot.LOSS_COLOUR),     # the top edge
                           (at(0, 30, 7.7, 7.6, 7.9), plot.LOSS_COLOUR),
                           (at(0, 40, 7.6, 7.6, 7.9), plot.LOSS_COLOUR),     # the bottom right corner
                           (at(1, 20, 0.6, 0, 1), plot.QUICK_COLOUR),
                           (at(1, 40, 0.9, 0, 1), plot.FINAL_COLOUR)]:
        x, y = round(x), round(y)
        near = {image.getpixel((x + dx, y + dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        assert colour in near, (x, y)


def test_curve_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path)])
    assert f"{tmp_path}/metrics.jsonl not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "lo\n')
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path)])
    assert "metrics.jsonl, line 2: not a JSON row" in capsys.readouterr().err


# ------------------------------------------------------------------ the README's pictures

def test_readme_pictures_exist_are_small_and_have_their_commands():
    text = readme()
    linked = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text) + re.findall(r'<img src="([^"]+)"', text)
    assert sorted(set(linked)) == sorted(PICTURES)
    for path in linked:
        full = os.path.join(ROOT, path)
        assert os.path.getsize(full) < 1_000_000, path                 # and so it exists
        with Image.open(full) as image:
            assert image.size == PICTURES[path][1], path
    for command, _ in PICTURES.values():
        assert command in text, command


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few-step train.py run on 32-px images: a checkpoint, metrics.jsonl and eval.json."""
    out = tmp_path_factory.mktemp("run")
    subprocess.run([sys.executable, "train.py", "--out", str(out), "--image-size", "32",
                    "--n-train", "256", "--batch-size", "8", "--accum-steps", "2", "--queue-size", "32",
                    "--steps", "4", "--warmup-steps", "2", "--alpha-warmup", "2", "--vocab-size", "300",
                    "--log-every", "1", "--eval-every", "2", "--eval-per-class", "8",
                    "--eval-retrieval", "20", "--data-cache", "", "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


@pytest.mark.parametrize("picture", list(PICTURES))
def test_picture_command_draws_a_picture_of_the_stated_size(picture, trained, tmp_path):
    command, size = PICTURES[picture]
    argv = [str(trained) if a == "out" else str(tmp_path / "p.png") if a == picture else a
            for a in shlex.split(command)[1:]]
    if argv[0] == "eval.py":                     # a smaller benchmark: the picture does not change
        argv += ["--n-per-class", "8", "--n-retrieval", "20", "--seeds", "1", "--device", "cpu"]
    subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == size


# ------------------------------------------------------------------ the grid with noisy reports

def test_show_frames_exactly_the_reports_the_noise_changed(tmp_path):
    from synthetic import dataset as synthetic
    n, size, p = 9, 64, 0.5
    plot.show(tmp_path / "noisy.png", n, size, report_noise=p)
    plot.show(tmp_path / "clean.png", n, size)
    labels = [synthetic.make_study(synthetic.TRAIN_SEED, i, 8).labels for i in range(n)]
    clean = [synthetic.make_study(synthetic.TRAIN_SEED, i, 8).report for i in range(n)]
    _, noise = synthetic.apply_report_noise(synthetic.TRAIN_SEED, clean, labels, p)
    changed = synthetic.changed_reports(noise).tolist()
    assert 0 < sum(changed) < n                                   # some framed, some not
    w, h = plot.show_tile_size(size)

    def framed(path, i):
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        x, y = (i % 3) * w, (i // 3) * h
        edge = rgb[y + 10:y + w - 10, x]                           # the tile's left edge, beside the picture
        return bool(((edge[:, 0] - edge[:, 1] > 80) & (edge[:, 0] > 200)).mean() > 0.9)

    assert [framed(tmp_path / "noisy.png", i) for i in range(n)] == changed
    assert not any(framed(tmp_path / "clean.png", i) for i in range(n))
    assert plot.noise_note(noise, changed.index(True)).startswith("noise: ")
    assert plot.noise_note(noise, changed.index(False)) is None


def test_the_grounding_figure_draws_the_contrast_maps(monkeypatch, tmp_path):
    """--show-grounding draws, for three studies per class, the contrast map of the report's
    sentence and of the finding alone, each against the whole set's mean (eval.json's "contrast")."""
    import argparse

    import torch

    from data import train_tokenizer
    from evaluation.figures import show_grounding
    from evaluation.protocols import grounding_maps, mean_patch_vectors
    from model import DualEncoder, ModelConfig
    from synthetic.dataset import grounding_set
    g = grounding_set(4, 32)
    tokenizer = train_tokenizer(g["texts"] + g["unlocated"], 200)
    model = DualEncoder(ModelConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=2,
                                    vision_heads=2, vocab_size=tokenizer.get_vocab_size(),
                                    context_length=16, text_width=32, text_layers=1, text_heads=2,
                                    embed_dim=24)).eval()
    drawn = {}
    monkeypatch.setattr(plot, "draw_grounding", lambda path, images, masks, maps, texts, labels,
                        per_class: drawn.update(maps=maps, texts=texts, per_class=per_class))
    args = argparse.Namespace(show_grounding=str(tmp_path / "g.png"), device="cpu", batch_size=7,
                              precision="fp32", eval_seed=None)
    show_grounding(model, tokenizer, g, args)
    mean = mean_patch_vectors(model, g["images"], "cpu")
    rows = [4 * c + i for c in range(5) for i in range(3)]
    for part, texts in enumerate((g["texts"], g["unlocated"])):   # per class: report, then no place
        want = grounding_maps(model, tokenizer, g["images"][rows], [texts[i] for i in rows], "cpu",
                              mean_vectors=mean).view(5, 3, 32, 32)
        got = drawn["maps"].view(5, 2, 3, 32, 32)[:, part]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert drawn["per_class"] == 6 and drawn["texts"][3] == g["unlocated"][0]
