"""Figures with Pillow alone: a training run's curves (the loss and the zero-shot accuracy against
step), the grid of synthetic studies, eval.py --show's zero-shot predictions, and the words on
every figure.

    python -m tools.plot out --out docs/curve.png
    python data.py show --out samples.png     # the grid (show below)

Reads train.py's out/metrics.jsonl: a row every --log-every steps with the training loss, and one
every --eval-every steps with the accuracy of the quick zero-shot check (5 x 50 images). When the
run finished, out/eval.json adds the final model's zero-shot accuracy (5 x 200 images) at the last
step. No plotting library: a panel is a box, round ticks, and a polyline through the points.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from synthetic import reports
from synthetic import dataset as synthetic

# -----------------------------------------------------------------------------
# Words on a picture (Pillow alone), for every figure: these curves, eval.py --show's predictions,
# and the grid of synthetic studies (python data.py show)

SHOW_CAPTION_H = 96  # px of text under each picture in the `show` grid
CAPTION_LINE_H = 13  # px from one caption line to the next


def show_tile_size(image_size):
    """(width, height) of one tile of the `show` grid."""
    d = max(image_size, 192)
    return d, d + SHOW_CAPTION_H


def describe(findings):
    if not findings:
        return "normal"
    parts = []
    for name, f in findings.items():
        grade = f.get("severity")  # said as the reports say it: "mild cardiomegaly", not "small"
        grade = grade and reports.SEVERITY_WORDS.get(name, reports.SEVERITY_WORDS["default"])[grade][0]
        words = [grade, f.get("side"), f.get("device", name)]
        parts.append(" ".join(w for w in words if w) + ("?" if f.get("hedged") else ""))
    return ", ".join(parts)


def caption_font(size=11):
    """Pillow's built-in font (Aileron; no font file needed), or its bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow before 10.1 has only the bitmap font, and takes no size
        return ImageFont.load_default()


def word_gap(font):
    """px between two words of a caption. Aileron's space is a fifth of an em, 2 px at 10-11 px,
    which anti-aliasing blurs into the letters on either side ("Noacute"); half the width of an
    "n" reads as a space at any size."""
    return max(font.getlength(" "), math.ceil(font.getlength("n") / 2))


def words_width(words, font):
    """px that draw_words takes to draw words on one line."""
    return sum(font.getlength(word) for word in words) + word_gap(font) * (len(words) - 1)


def wrap_words(text, font, width):
    """Split text into lines of words, each at most width px wide as draw_words draws it (a word
    longer than a line gets a line of its own)."""
    lines = []
    for word in text.split():
        if lines and words_width(lines[-1] + [word], font) <= width:
            lines[-1].append(word)
        else:
            lines.append([word])
    return lines


def draw_words(draw, xy, words, font, fill):
    """Draw words left to right from xy, word_gap(font) px apart."""
    x, y = xy
    for word in words:
        draw.text((x, y), word, fill=fill, font=font)
        x += font.getlength(word) + word_gap(font)


NOISE_COLOUR = (255, 105, 90)  # the frame and the note of a report --report-noise changed


def noise_note(noise, i):
    """The words that say how the noise changed pair i's report, or None when it did not. A swapped
    pair carries study j's report as written, which may itself leave findings of j out."""
    left_out = lambda k: [synthetic.FINDINGS[f] for f in noise["omitted"][k].nonzero().flatten().tolist()]  # noqa: E731
    j = int(noise["swapped_from"][i])
    if j >= 0:
        return f"noise: the report of study {j}" + (f", without {', '.join(left_out(j))}" if left_out(j) else "")
    return "noise: left out " + ", ".join(left_out(i)) if left_out(i) else None


def show(out, n=16, image_size=128, report_noise=0.0):
    """A grid of synthetic training studies, each with its findings and the start of its report.
    report_noise P > 0: the reports of a training set of these n studies with noise, as train.py
    --report-noise P gives them (a swap takes the report of another study of the grid; studies are
    numbered from 0, row by row); a changed report gets a red frame and a red note saying how."""
    w, h = show_tile_size(image_size)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * w, rows * h), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    font = caption_font()
    max_lines = SHOW_CAPTION_H // CAPTION_LINE_H
    # A whole-number zoom shows the model's own pixels, unsmoothed (and compresses 3x better);
    # any other zoom would make some pixels wider than others, so it is smoothed instead.
    resample = Image.NEAREST if w % image_size == 0 else Image.BICUBIC
    studies = [synthetic.make_study(synthetic.TRAIN_SEED, i, image_size) for i in range(n)]
    reports, noise = [s.report for s in studies], None
    if synthetic.check_report_noise(report_noise) > 0:
        labels = [s.labels for s in studies]
        reports, noise = synthetic.apply_report_noise(synthetic.TRAIN_SEED, reports, labels, report_noise)
    for i, s in enumerate(studies):
        x, y = (i % cols) * w, (i // cols) * h
        img = Image.fromarray(synthetic.to_uint8(s.image), "L").resize((w, w), resample)
        canvas.paste(img.convert("RGB"), (x, y))
        # findings in yellow (the ground truth), the noise's note in red, the report in grey
        head = wrap_words(describe(s.findings), font, w - 8)[:2]
        note = noise_note(noise, i) if noise is not None else None
        marks = wrap_words(note, font, w - 8)[:2] if note else []
        report = wrap_words(reports[i], font, w - 8)[:max_lines - len(head) - len(marks)]
        colours = [(255, 210, 90)] * len(head) + [NOISE_COLOUR] * len(marks) + [(220, 220, 220)] * len(report)
        for j, (words, colour) in enumerate(zip(head + marks + report, colours)):
            draw_words(draw, (x + 4, y + w + 2 + CAPTION_LINE_H * j), words, font, colour)
        if note:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=NOISE_COLOUR, width=2)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette: the picture is grey levels plus two caption colours, so it looks the
    # same and the PNG is a few times smaller.
    canvas.quantize(256).save(out, optimize=True)
    return canvas.size


# -----------------------------------------------------------------------------
# Training curves

PANEL_W, PANEL_H = 400, 280        # px of one panel; the loss on the left, the accuracy on the right
LEFT, TOP, RIGHT, BOTTOM = 46, 24, 14, 34   # px around the plot area, for the title and tick labels
LOSS_COLOUR, QUICK_COLOUR, FINAL_COLOUR = (40, 90, 200), (220, 110, 0), (0, 140, 60)
GRID, INK = (225, 225, 225), (40, 40, 40)


class CurveError(Exception):
    """The run's folder has no usable metrics.jsonl: reported in one line."""


def read_run(run_dir):
    """-> (loss [(step, loss)], quick [(step, accuracy)], final (step, accuracy) or None)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise CurveError(f"{path} not found: give the --out folder of a train.py run")
    loss, quick = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise CurveError(f"{path}, line {n}: not a JSON row") from None
            if "loss" in row:
                loss.append((row["step"], row["loss"]))
            if "zero_shot_accuracy" in row:
                quick.append((row["step"], row["zero_shot_accuracy"]))
    if not loss:
        raise CurveError(f"{path} has no row with a loss")
    final = None
    eval_path = os.path.join(run_dir, "eval.json")
    if os.path.isfile(eval_path):
        with open(eval_path) as f:
            results = json.load(f)
        if "zero_shot" in results:
            final = (loss[-1][0], results["zero_shot"]["accuracy"])
    return loss, quick, final


def ticks(lo, hi, count=5):
    """About count round values (1, 2 or 5 times a power of ten apart) from <= lo to >= hi."""
    raw = max(hi - lo, 1e-9) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(round((last - first) / step) + 1)]


class Panel:
    """A plot area at (x, y) on the canvas, mapping (step, value) to pixels."""

    def __init__(self, x, y, x_ticks, y_ticks):
        self.x0, self.y0 = x + LEFT, y + TOP                              # top-left of the plot area
        self.w, self.h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
        self.x_ticks, self.y_ticks = x_ticks, y_ticks

    def xy(self, step, value):
        (a, b), (c, d) = (self.x_ticks[0], self.x_ticks[-1]), (self.y_ticks[0], self.y_ticks[-1])
        return (self.x0 + (step - a) / (b - a) * self.w,
                self.y0 + self.h - (value - c) / (d - c) * self.h)         # pixel rows grow down

    def draw_axes(self, draw, font, title, label):
        for t in self.y_ticks:                                  # horizontal grid lines, labelled
            _, y = self.xy(self.x_ticks[0], t)
            draw.line([(self.x0, y), (self.x0 + self.w, y)], fill=GRID)
            text = f"{t:g}"
            draw.text((self.x0 - 4 - words_width([text], font), y - 7), text, fill=INK, font=font)
        for t in self.x_ticks:
            x, _ = self.xy(t, self.y_ticks[0])
            draw.line([(x, self.y0 + self.h), (x, self.y0 + self.h + 3)], fill=INK)
            text = f"{t:g}"
            draw.text((x - words_width([text], font) / 2, self.y0 + self.h + 5), text, fill=INK,
                      font=font)
        draw.rectangle([self.x0, self.y0, self.x0 + self.w, self.y0 + self.h], outline=INK)
        draw_words(draw, (self.x0, self.y0 - 18), title.split(), font, INK)
        words = label.split()
        draw_words(draw, (self.x0 + self.w - words_width(words, font), self.y0 + self.h + 18),
                   words, font, INK)

    def draw_line(self, draw, points, colour, dots=False):
        pixels = [self.xy(s, v) for s, v in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for x, y in pixels if dots else []:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def draw_curves(run_dir, out):
    """Two panels side by side: the training loss, and the zero-shot accuracy (quick checks, then
    the final evaluation) against the optimizer step. Returns the picture's (width, height)."""
    loss, quick, final = read_run(run_dir)
    last = loss[-1][0]
    canvas = Image.new("RGB", (2 * PANEL_W, PANEL_H), "white")
    draw, font = ImageDraw.Draw(canvas), caption_font()
    x_ticks = ticks(0, last)

    values = [v for _, v in loss]
    left = Panel(0, 0, x_ticks, ticks(min(values), max(values)))
    left.draw_axes(draw, font, "training loss (InfoNCE with soft targets)", "optimizer step")
    left.draw_line(draw, loss, LOSS_COLOUR)

    right = Panel(PANEL_W, 0, x_ticks, ticks(0, 1))
    right.draw_axes(draw, font, "zero-shot accuracy (5 classes; chance 0.2)", "optimizer step")
    right.draw_line(draw, quick + ([final] if final else []), QUICK_COLOUR, dots=True)
    if final:                                     # the final evaluation has 4x the images: its own colour
        x, y = right.xy(*final)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=FINAL_COLOUR)
    legend = [("quick check, 5 x 50 images", QUICK_COLOUR)] + \
        ([("final, 5 x 200 images", FINAL_COLOUR)] if final else [])
    for i, (text, colour) in enumerate(legend):
        x, y = right.x0 + 8, right.y0 + 8 + 15 * i
        draw.ellipse([x, y + 3, x + 6, y + 9], fill=colour)
        draw_words(draw, (x + 11, y), text.split(), font, INK)

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    canvas.save(out, optimize=True)
    return canvas.size


# -----------------------------------------------------------------------------
# eval.py --show: zero-shot predictions

def draw_predictions(path, images, labels, probs, classes, per_class=4, cell=160):
    """Save a PNG grid: a row per true class, per_class images in it, each captioned with its true
    finding and the model's top-3 zero-shot predictions (green when the top one is right)."""
    import torch   # only this figure needs torch: the curves and the grid are Pillow alone

    labels = torch.as_tensor(labels)
    rows = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(len(classes))]
    rows = [r for r in rows if len(r)]
    line, text_lines = 13, 4
    grid = Image.new("RGB", (per_class * cell, len(rows) * (cell + text_lines * line + 6)), "white")
    draw, font = ImageDraw.Draw(grid), caption_font()
    for r, indices in enumerate(rows):
        for c, i in enumerate(indices.tolist()):
            x0, y0 = c * cell, r * (cell + text_lines * line + 6)
            pixels = images[i]                                                  # (C, H, W)
            pixels = pixels if pixels.dtype == torch.uint8 else (pixels * 255).round().byte()
            # (H, W) gives a grayscale picture, (H, W, 3) an RGB one.
            picture = Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).cpu().numpy())
            # Nearest neighbour: the model's own pixels, unsmoothed (and a PNG a third the size).
            picture = picture.convert("RGB").resize((cell - 4, cell - 4), Image.NEAREST)
            grid.paste(picture, (x0 + 2, y0 + 2))
            top = probs[i].topk(min(3, len(classes)))
            draw_words(draw, (x0 + 4, y0 + cell), f"true: {classes[labels[i]]}".split(), font, "black")
            for j, (p, k) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                colour = ((0, 130, 0) if k == labels[i] else (200, 0, 0)) if j == 0 else "gray"
                draw_words(draw, (x0 + 4, y0 + cell + (j + 1) * line), f"{classes[k]} {p:.2f}".split(),
                           font, colour)
    grid.quantize(256).save(path, optimize=True)   # grey pictures and a few colours: a palette is enough


# -----------------------------------------------------------------------------
# eval.py --show-grounding: where a sentence lands in the image

def heat(values):
    """Map values in [0, 1] (a numpy array) to RGB uint8: black, red, yellow, white."""
    import numpy as np
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 0], [200, 30, 0], [255, 220, 0], [255, 255, 255]], dtype=np.float64)
    at = v * (len(stops) - 1)
    lo = np.clip(np.floor(at).astype(int), 0, len(stops) - 2)
    frac = at - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def draw_grounding(path, images, masks, maps, texts, labels, per_class=3, cell=128):
    """Save a PNG: a row per class, per_class studies in it; each cell is the image with the
    model's map over it (min-max scaled per image, half transparent), the true region outlined in
    green, and the sentence under it."""
    import numpy as np

    classes = list(dict.fromkeys(labels))
    rows = [[i for i, name in enumerate(labels) if name == c][:per_class] for c in classes]
    line, text_lines = 13, 4
    grid = Image.new("RGB", (per_class * cell, len(rows) * (cell + text_lines * line + 6)), "white")
    draw, font = ImageDraw.Draw(grid), caption_font()
    for r, indices in enumerate(rows):
        for c, i in enumerate(indices):
            x0, y0 = c * cell, r * (cell + text_lines * line + 6)
            gray = np.asarray(images[i][0], dtype=np.float64)
            gray = gray / 255 if gray.max() > 1 else gray
            m = np.asarray(maps[i], dtype=np.float64)
            m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
            rgb = 0.5 * np.repeat(gray[..., None] * 255, 3, axis=-1) + 0.5 * heat(m)
            mask = np.asarray(masks[i], dtype=bool)
            inner = mask.copy()                       # the outline: mask pixels with a neighbour outside
            inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                                 & mask[1:-1, :-2] & mask[1:-1, 2:])
            rgb[mask & ~inner] = (0, 230, 0)
            picture = Image.fromarray(rgb.astype(np.uint8)).resize((cell - 4, cell - 4), Image.NEAREST)
            grid.paste(picture, (x0 + 2, y0 + 2))
            for j, words in enumerate(wrap_words(texts[i], font, cell - 8)[:text_lines]):
                draw_words(draw, (x0 + 4, y0 + cell + j * line), words, font, "black")
    grid.quantize(256).save(path, optimize=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="train.py's --out folder (holding metrics.jsonl)")
    p.add_argument("--out", default="curve.png", help="PNG to write (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        size = draw_curves(args.run, args.out)
    except (CurveError, OSError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out} ({size[0]}x{size[1]} px)")


if __name__ == "__main__":
    main()
