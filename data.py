"""
Data for image-text pretraining of chest radiographs and their reports.

What every data source shares, in the order a reader meets them:

1. Augmentation for radiographs (mild, and never a flip, which would swap the patient's sides).
2. Duplicate-aware report ids: reports equal after normalisation get equal ids.
3. Real data through a manifest (a CSV of image paths and texts); convert.py writes manifests from
   the public data sets (IU X-Ray, MIMIC-CXR-JPG, CheXpert).
4. A WordPiece tokenizer trained on the reports, and `tokenize` to padded id tensors.

The procedural data set that `python train.py` uses by default is synthetic.py; its findings
are the labels a manifest may name. The command line covers both:

    python data.py show --out samples.png            # look at synthetic studies
    python data.py export --out DIR --n N            # the synthetic set as PNGs + manifest.csv
"""

import argparse
from collections import Counter
import csv
import functools
import hashlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import synthetic

# -----------------------------------------------------------------------------
# Augmentation for radiographs

@functools.lru_cache(maxsize=1)
def _augmentation():
    from torchvision.transforms import v2  # imported here: torchvision is slow to import, and only training needs it

    # Mild geometric and photometric changes, like those between two real acquisitions:
    # a few degrees of rotation, a few percent of shift and zoom, exposure and contrast.
    # No horizontal flip: it swaps the patient's left and right, so "left pleural effusion" in
    # the report would describe the wrong side of the picture (and the heart would sit on the
    # right). No vertical flip or large rotation either: chest films are never upside down.
    return v2.Compose([
        v2.RandomAffine(degrees=4, translate=(0.03, 0.03), scale=(0.96, 1.04)),
        v2.ColorJitter(brightness=0.1, contrast=0.1),
    ])


def train_augment(images):
    """images: float (B, C, H, W) in [0, 1] -> same shape, each sample augmented on its own.
    All randomness comes from torch's global generator, so restoring torch.get_rng_state()
    on resume replays the very same augmentations."""
    augment = _augmentation()
    return torch.stack([augment(img) for img in images]).clamp_(0, 1)


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
# Real data: manifests


class ManifestError(ValueError):
    """Bad input in a manifest; the message names the file, the row and the column at fault."""


def _open_csv(path, required):
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    f = open(path, newline="", encoding="utf-8-sig")  # utf-8-sig: tolerate Excel's byte-order mark
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    for col in required:
        if col not in header:
            f.close()
            raise ManifestError(f"{path}: line 1 (header), column '{col}': missing (header is {header})")
    return f, reader


def _where(path, row, line, column):
    return f"{path}: row {row} (line {line}), column '{column}'"


def load_image(path, image_size, channels=1):
    """An image file -> uint8 (channels, image_size, image_size): centre-cropped to a square and
    resized. 16-bit grayscale (common for radiographs) is rescaled by its own range, because
    Pillow's plain conversion to 8 bits would clip it."""
    with Image.open(path) as im:
        im.load()  # decode now, so a corrupt file fails here and not later
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(im, dtype=np.float32)
            lo, hi = float(a.min()), float(a.max())
            im = Image.fromarray(synthetic.to_uint8((a - lo) / max(hi - lo, 1e-6)), "L")
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (image_size, image_size):
            im = ImageOps.fit(im, (image_size, image_size), Image.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def _read_rows(csv_path, required, image_size, channels, check_row):
    """Shared loop: every row validated (all problems collected, then raised together)."""
    csv_path = Path(csv_path)
    f, reader = _open_csv(csv_path, required)
    images, rows, errors = [], [], []
    with f:
        for row_no, row in enumerate(reader, start=1):
            line = reader.line_num
            row = {k: (v or "").strip() for k, v in row.items() if k is not None}
            problems = check_row(row, lambda col: _where(csv_path, row_no, line, col))
            if not row["image"]:
                problems.append(f"{_where(csv_path, row_no, line, 'image')}: empty path")
            else:
                img_path = Path(row["image"])
                img_path = img_path if img_path.is_absolute() else csv_path.parent / img_path
                if not img_path.is_file():
                    problems.append(f"{_where(csv_path, row_no, line, 'image')}: file not found: {img_path}")
                else:
                    try:
                        images.append(load_image(img_path, image_size, channels))
                    except (OSError, UnidentifiedImageError, ValueError) as e:
                        problems.append(f"{_where(csv_path, row_no, line, 'image')}: cannot read image {img_path} ({e})")
            errors += problems
            rows.append(row)
    if not rows:
        raise ManifestError(f"{csv_path}: no data rows")
    if errors:
        more = f"\n({len(errors) - 1} more problems:)\n" + "\n".join(errors[1:20]) if len(errors) > 1 else ""
        raise ManifestError(errors[0] + more)
    return torch.from_numpy(np.stack(images)), rows


def parse_labels(value):
    return [name.strip().lower() for name in value.split(";") if name.strip()]


def read_pair_manifest(csv_path, image_size, channels=1):
    """Image-report pairs from a CSV with columns image, text (and optional labels, split).
    Returns {"images": uint8 (n, C, H, W), "texts", "labels": float (n, F) or None, "splits": list or None}."""
    with_labels = [None]

    def check(row, where):
        problems = []
        if not row["text"]:
            problems.append(f"{where('text')}: empty report")
        if "labels" in row:
            with_labels[0] = True
            unknown = [n for n in parse_labels(row["labels"]) if n not in synthetic.FINDINGS]
            if unknown:
                problems.append(f"{where('labels')}: unknown finding(s) {unknown}; known: {synthetic.FINDINGS}")
        return problems

    images, rows = _read_rows(csv_path, ["image", "text"], image_size, channels, check)
    labels = None
    if with_labels[0]:
        labels = torch.zeros(len(rows), len(synthetic.FINDINGS))
        for i, row in enumerate(rows):
            for name in parse_labels(row["labels"]):
                labels[i, synthetic.FINDINGS.index(name)] = 1.0
    splits = [row["split"] for row in rows] if "split" in rows[0] else None
    return {"images": images, "texts": [row["text"] for row in rows], "labels": labels, "splits": splits}


def read_class_manifest(csv_path, image_size, classes, channels=1):
    """A classification set: columns image, label (one of `classes`, e.g. the prompt file's names).
    Returns {"images": uint8 (n, C, H, W), "labels": long (n,), "classes": classes}."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}

    def check(row, where):
        if row["label"].lower() not in lookup:
            return [f"{where('label')}: unknown class {row['label']!r}; known: {list(classes)}"]
        return []

    images, rows = _read_rows(csv_path, ["image", "label"], image_size, channels, check)
    labels = torch.tensor([lookup[row["label"].lower()] for row in rows], dtype=torch.long)
    return {"images": images, "labels": labels, "classes": list(classes)}


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


# -----------------------------------------------------------------------------
# Command line: show, export


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="draw a grid of synthetic studies with findings and reports")
    p.add_argument("--out", default="samples.png", help="PNG to write")
    p.add_argument("--n", type=int, default=16, help="number of studies")
    p.add_argument("--image-size", type=int, default=128, help="render size in px")
    p = sub.add_parser("export", help="write synthetic training items as PNGs + manifest.csv")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--n", type=int, required=True, help="number of items")
    p.add_argument("--image-size", type=int, default=64, help="render size in px")
    args = parser.parse_args(argv)
    if args.command in ("show", "export"):
        if args.n < 1:
            parser.error(f"--n must be at least 1, got {args.n}")
        if not 16 <= args.image_size <= 1024:
            parser.error(f"--image-size must be in 16..1024, got {args.image_size}")
    try:
        if args.command == "show":
            size = synthetic.show(args.out, args.n, args.image_size)
            print(f"wrote {args.out} ({size[0]}x{size[1]} px, {args.n} studies)")
        elif args.command == "export":
            path = synthetic.export_synthetic(args.out, args.n, args.image_size)
            print(f"wrote {args.n} images and {path}")
    except (ManifestError, OSError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"data.py {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
