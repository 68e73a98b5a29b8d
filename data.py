"""
Data for image-text pretraining of chest radiographs and their reports.

What every data source shares, in the order a reader meets them:

1. Augmentation for radiographs (mild, and never a flip, which would swap the patient's sides).
2. Duplicate-aware report ids: reports equal after normalisation get equal ids.
3. A WordPiece tokenizer trained on the reports, and `tokenize` to padded id tensors.

Real data comes through manifests (a CSV of image paths and texts: manifests/read.py), which
tools/convert.py writes from the public data sets (IU X-Ray, MIMIC-CXR-JPG, CheXpert, MS-CXR).
The procedural data set that `python train.py` uses by default is synthetic/; its 8 findings
are one set of labels a manifest may carry (any names will do). The command line covers both:

    python data.py show --out samples.png            # look at synthetic studies
    python data.py show --report-noise 0.3           # ... with noisy reports, the changed ones marked
    python data.py export --out DIR --n N            # the synthetic set as PNGs + manifest.csv
"""

import argparse
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from synthetic import dataset as synthetic

# -----------------------------------------------------------------------------
# Augmentation for radiographs

# Mild geometric and photometric changes, like those between two real acquisitions: a few degrees
# of rotation, a few percent of shift and zoom, exposure and contrast. No horizontal flip: it swaps
# the patient's left and right, so "left pleural effusion" in the report would describe the wrong
# side of the picture (and the heart would sit on the right). No vertical flip or large rotation
# either: chest films are never upside down.
DEGREES, TRANSLATE, SCALE, BRIGHTNESS, CONTRAST = 4.0, 0.03, (0.96, 1.04), 0.1, 0.1


def augment_params(n, generator=None, translate=TRANSLATE):
    """n random draws -> dict of (n,) float tensors: angle (degrees), tx, ty (fractions of the side,
    uniform in +-translate), scale, brightness, contrast (factors). Drawn on the CPU from torch's
    global generator (or the one given), so restoring torch.get_rng_state() on resume replays the
    very same augmentations, whatever device the images are on."""
    u = torch.rand(n, 6, generator=generator) * 2 - 1                # uniform in [-1, 1)
    lo, hi = SCALE
    return {"angle": u[:, 0] * DEGREES, "tx": u[:, 1] * translate, "ty": u[:, 2] * translate,
            "scale": (lo + hi) / 2 + u[:, 3] * (hi - lo) / 2,
            "brightness": 1 + u[:, 4] * BRIGHTNESS, "contrast": 1 + u[:, 5] * CONTRAST}


_LUMA = torch.tensor([0.299, 0.587, 0.114])   # RGB -> gray weights (ITU-R 601, as torchvision)


def apply_augment(images, p):
    """images float (B, C, S, S) in [0, 1], p from augment_params -> augmented, same shape, in [0, 1].

    The whole batch in a few tensor operations on the images' own device (a GPU augments on the
    GPU). Geometry: each output pixel samples the input at the inverse of "rotate by angle and
    scale about the centre, then shift", nearest pixel, zeros outside (torchvision's RandomAffine
    with its defaults, but shifts are not rounded to whole pixels). Photometry: brightness
    multiplies, contrast blends with the image's mean (torchvision's ColorJitter), each clamped to
    [0, 1]."""
    B, C, H, W = images.shape
    if H != W:
        raise ValueError(f"apply_augment expects square images, got {H} x {W}")
    p = {k: v.to(images.device, torch.float32) for k, v in p.items()}
    a = torch.deg2rad(p["angle"])
    cos, sin = torch.cos(a) / p["scale"], torch.sin(a) / p["scale"]
    # affine_grid maps output coordinates (-1..1) to input coordinates: x_in = M (x_out - t),
    # with M the inverse rotation and zoom, t the shift (2 * fraction in these units)
    M = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)   # (B, 2, 2)
    t = torch.stack([p["tx"], p["ty"]], -1) * 2                                       # (B, 2)
    theta = torch.cat([M, -(M @ t[:, :, None])], 2)                                   # (B, 2, 3)
    grid = F.affine_grid(theta, (B, C, H, W), align_corners=False)
    out = F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = (out * p["brightness"][:, None, None, None]).clamp_(0, 1)
    gray = out.mean(1) if C == 1 else (out * _LUMA.to(out)[:, None, None]).sum(1)     # (B, S, S)
    mean = gray.mean((1, 2))[:, None, None, None]                                     # (B, 1, 1, 1)
    c = p["contrast"][:, None, None, None]
    return (c * out + (1 - c) * mean).clamp_(0, 1)


def train_augment(images, translate=TRANSLATE):
    """images: float (B, C, S, S) in [0, 1] -> same shape, each sample augmented on its own, on the
    images' device; the randomness is torch's global (CPU) generator's alone. translate: the largest
    shift, a fraction of the side (train.py's --augment-shift)."""
    return apply_augment(images, augment_params(images.shape[0], translate=translate))


# -----------------------------------------------------------------------------
# Duplicate-aware ids: many reports are word for word the same (normal studies); such pairs are
# not negatives of each other. Equal normalised text -> equal id.


def normalise_report(text):
    text = re.sub(r"[^\w\s]", " ", text.lower())  # punctuation out
    return " ".join(text.split())                # whitespace collapsed


def report_ids(texts):
    """int64 (B,) ids, equal iff the normalised texts are equal. A hash from hashlib, so the ids are
    the same in every process (Python's hash() of a str is salted per process)."""
    ids = [int.from_bytes(hashlib.blake2b(normalise_report(t).encode(), digest_size=8).digest(), "little")
           & (2**63 - 1) for t in texts]
    return torch.tensor(ids, dtype=torch.int64)


# -----------------------------------------------------------------------------
# Tokenizer: WordPiece (BERT's) trained on the reports in seconds. Radiology reports have a small,
# repetitive vocabulary, so a few thousand pieces cover them whole words at a time.

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
PAD_ID = 0  # the model builds its padding mask as tokens != PAD_ID


def train_tokenizer(texts, vocab_size=2048):
    """A WordPiece tokenizer whose vocabulary is the reports' most frequent words, plus every
    character seen, alone and as a word continuation ("##c"), so an unseen word is spelled out
    piece by piece rather than lost to [UNK].

    Why not tokenizers' own WordPiece / BPE trainers: they break ties between equally frequent
    merges in an order that changes from process to process (same texts, different vocabularies:
    we checked), so two runs with the same seed would train different models and an exact resume
    could not be tested. Sorting by (count, word) is deterministic, and reports have a small,
    repetitive vocabulary that whole words cover well."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # split on whitespace and punctuation
    counts = Counter(word for text in texts
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    pieces = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    if vocab_size < len(pieces):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(pieces)} special tokens "
                         f"and characters of these texts")
    taken = set(pieces)
    words = [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in taken]
    vocab = {piece: i for i, piece in enumerate(pieces + words[:vocab_size - len(pieces)])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # [CLS] text [SEP]: every text, even an empty one, has non-pad tokens
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    assert tok.token_to_id("[PAD]") == PAD_ID
    return tok


def load_tokenizer(path):
    """A tokenizer.json (saved with tokenizer.save(path)); its [PAD] must be id PAD_ID."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id("[PAD]") != PAD_ID:
        raise ValueError(f"{path}: '[PAD]' must have id {PAD_ID}, has {tok.token_to_id('[PAD]')}")
    return tok


def tokenize(tokenizer, texts, context_length):
    """texts -> (ids long (B, L), mask bool (B, L)): padded with PAD_ID; a text longer than L keeps
    its first L-1 tokens and its final [SEP], so the end-of-text token is always there."""
    ids = torch.full((len(texts), context_length), PAD_ID, dtype=torch.long)  # (B, L)
    for i, enc in enumerate(tokenizer.encode_batch(list(texts))):
        seq = [t for t, m in zip(enc.ids, enc.attention_mask) if m]  # drop padding the tokenizer may add
        if len(seq) > context_length:
            seq = seq[:context_length - 1] + seq[-1:]
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, ids != PAD_ID


def trim_padding(tok, multiple=1):
    """Drop the padding columns no text in this micro-batch reaches: the text encoder's output does
    not depend on padding (model.py), and the reports average under half the context, so this saves
    about a third of the text encoder's work. The kept length is rounded up to a multiple (never
    past the context): torch.compile then sees a few shapes, each compiled once, not one per length."""
    length = max(1, int((tok != PAD_ID).sum(1).max()))
    length = min(tok.shape[1], -(-length // multiple) * multiple)
    return tok[:, :length]


# -----------------------------------------------------------------------------
# Command line: show, export


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="draw a grid of synthetic studies with findings and reports")
    p.add_argument("--out", default="samples.png", help="PNG to write")
    p.add_argument("--n", type=int, default=16, help="number of studies")
    p.add_argument("--image-size", type=int, default=128, help="render size in px")
    p.add_argument("--report-noise", type=float, default=0.0, metavar="P",
                   help="the reports as train.py --report-noise P makes them (a training set of "
                        "these --n studies); the changed ones are framed and say how, in red")
    p = sub.add_parser("export", help="write synthetic training items as PNGs + manifest.csv")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--n", type=int, required=True, help="number of items")
    p.add_argument("--image-size", type=int, default=64, help="render size in px")
    p.add_argument("--report-noise", type=float, default=0.0, metavar="P",
                   help="noisy texts as train.py --report-noise P (the labels stay the true findings)")
    args = parser.parse_args(argv)
    if args.command in ("show", "export"):
        if args.n < 1:
            parser.error(f"--n must be at least 1, got {args.n}")
        if not 16 <= args.image_size <= 1024:
            parser.error(f"--image-size must be in 16..1024, got {args.image_size}")
        if not 0 <= args.report_noise <= 1:   # nan and inf too
            parser.error(f"--report-noise must be in [0, 1], got {args.report_noise}")
    try:
        if args.command == "show":
            from tools import plot   # the grid is a figure: plot.py draws it
            size = plot.show(args.out, args.n, args.image_size, args.report_noise)
            noise = f", reports with noise {args.report_noise:g}" if args.report_noise else ""
            print(f"wrote {args.out} ({size[0]}x{size[1]} px, {args.n} studies{noise})")
        elif args.command == "export":
            path = synthetic.export_synthetic(args.out, args.n, args.image_size, args.report_noise)
            print(f"wrote {args.n} images and {path}")
    except (OSError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"data.py {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
