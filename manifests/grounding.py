"""Phrase grounding on your own data: a CSV of images, phrases and boxes (docs/grounding.md).

    m = read_grounding_manifest("ms_cxr.csv", image_size=224)   # images, phrases, masks, labels

eval.py --grounding-manifest reads one through evaluation.sets.read_grounding, which hands it to
evaluation/grounding.py's maps and scores; `python -m tools.convert ms-cxr` writes MS-CXR's boxes
as one. Depends on torch, Pillow and manifests/read.py.
"""

import csv
import math
from pathlib import Path

import torch
from PIL import Image

from manifests.read import ManifestError, load_image

# A grounding manifest is a CSV with columns image, text, x, y, w, h, and optionally label (the
# class, for per-class scores); other columns are ignored. (x, y) is the box's top-left corner in
# the image file's own pixels (x to the right, y down, from the top-left corner of the image),
# w and h its width and height. Several rows may name the same image; rows with the same image
# and the same text are one phrase with several boxes (MS-CXR's "Bibasilar opacities" has two),
# whose region is the union of its boxes.


def box_to_mask(x, y, w, h, image_w, image_h, size):
    """A box in an (image_w, image_h) image's pixels -> bool (size, size) mask of the evaluation
    image that manifest.load_image makes of it: the centred square crop of side min(image_w, image_h)
    (Pillow's ImageOps.fit), resized to size x size.

    Rounding rule: an evaluation pixel is in the mask when its CENTRE falls inside the box, with
    the box half-open, [x, x + w) x [y, y + h), so two boxes that share an edge never share a
    pixel. Pixel (i, j)'s centre is at (left + (j + 0.5) * s, top + (i + 0.5) * s) in the original
    image, s = side / size. E.g. a 100 x 100 image at size 10: the box (20, 30, 40, 10) is rows
    3..3, columns 2..5. A box too small to hold any pixel centre gets the one pixel under its
    own centre, so that no phrase vanishes; a box wholly in the part the crop cuts off gets an
    empty mask (the manifest reader drops those phrases and counts them)."""
    side = min(image_w, image_h)
    left, top, s = (image_w - side) / 2, (image_h - side) / 2, side / size
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) * s
    cols = (left + centres >= x) & (left + centres < x + w)
    rows = (top + centres >= y) & (top + centres < y + h)
    mask = rows[:, None] & cols[None, :]
    if not mask.any():
        j, i = math.floor((x + w / 2 - left) / s), math.floor((y + h / 2 - top) / s)
        if 0 <= i < size and 0 <= j < size:
            mask[i, j] = True
    return mask


GROUNDING_COLUMNS = ("image", "text", "x", "y", "w", "h")


def read_grounding_manifest(csv_path, image_size, channels=1, log=print):
    """A grounding manifest -> {"images": uint8 (n_images, C, S, S), "image_index": long (n,),
    "texts": [str] (n,), "labels": [str or None] (n,), "masks": bool (n, S, S), "dropped": int},
    one entry per phrase (rows grouped by image and text, boxes united). Every row is checked
    before any image is decoded, and every problem is reported with the file, row, line and
    column (the first 20 of them): a missing column, a value that is not a number, a box of
    zero or negative size, a box outside its image, an image file that is not there. Phrases
    whose boxes lie wholly outside the centre crop are dropped, counted aloud and in "dropped"."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    errors, rows, sizes = [], [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in GROUNDING_COLUMNS:
            if col not in header:
                raise ManifestError(f"{csv_path}: line 1 (header), column '{col}': missing (header is {header})")
        for row_no, row in enumerate(reader, start=1):
            where = f"{csv_path}: row {row_no} (line {reader.line_num})"
            problem = _check_row(row, where, csv_path.parent, sizes, Image)
            if problem:
                errors.append(problem)
            else:
                rows.append(row)
    if errors:
        more = f"\n({len(errors) - 1} more problems:)\n" + "\n".join(errors[1:20]) if len(errors) > 1 else ""
        raise ManifestError(errors[0] + more)
    if not rows:
        raise ManifestError(f"{csv_path}: no data rows")

    images, index_of = [], {}
    phrases = {}  # (image, text) -> [label, mask]; dicts keep the manifest's order
    for row in rows:
        path = row["path"]
        if path not in index_of:
            index_of[path] = len(images)
            try:  # torch.tensor copies: load_image's array is read-only
                images.append(torch.tensor(load_image(path, image_size, channels)))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise ManifestError(f"{row['where']}, column 'image': cannot read image {path} ({e})") from None
        box = box_to_mask(*(float(row[c]) for c in "xywh"), *sizes[path], image_size)
        key = (path, row["text"].strip())
        if key in phrases:
            phrases[key][1] |= box
        else:
            phrases[key] = [(row.get("label") or "").strip().lower() or None, box]
    kept = [(key, label, mask) for key, (label, mask) in phrases.items() if mask.any()]
    dropped = len(phrases) - len(kept)
    if dropped:
        log(f"grounding: {csv_path}: dropped {dropped} of {len(phrases)} phrases whose boxes lie "
            f"wholly outside the centred square crop the images are evaluated on")
    if not kept:
        raise ManifestError(f"{csv_path}: no phrase has a box inside the evaluated crop")
    return {"images": torch.stack(images), "image_index": torch.tensor([index_of[p] for (p, _), _, _ in kept]),
            "texts": [t for (_, t), _, _ in kept], "labels": [label for _, label, _ in kept],
            "masks": torch.stack([m for _, _, m in kept]), "dropped": dropped}


def _check_row(row, where, root, sizes, Image):
    """The first problem of one manifest row as a message, or None; sets row["path"] and
    row["where"] (for a message about it later), and caches
    the image's (width, height) in sizes (Pillow reads only the file's header for it)."""
    image = (row["image"] or "").strip()
    if not image:
        return f"{where}, column 'image': empty path"
    path = Path(image) if Path(image).is_absolute() else root / image
    if not (row["text"] or "").strip():
        return f"{where}, column 'text': empty phrase"
    box = {}
    for col in "xywh":
        value = (row[col] or "").strip()
        try:
            box[col] = float(value)
        except ValueError:
            return f"{where}, column '{col}': {value!r} is not a number"
        if not math.isfinite(box[col]):
            return f"{where}, column '{col}': {value!r} is not a finite number"
    for col, name in (("w", "width"), ("h", "height")):
        if box[col] <= 0:
            return f"{where}, column '{col}': the box's {name} is {row[col].strip()}; it must be positive"
    for col, side in (("x", "left of"), ("y", "above")):
        if box[col] < 0:
            return f"{where}, column '{col}': {row[col].strip()} is {side} the image (it must be >= 0)"
    key = str(path)
    if key not in sizes:
        if not path.is_file():
            return f"{where}, column 'image': file not found: {path}"
        try:
            with Image.open(path) as im:
                sizes[key] = im.size  # (width, height), from the header: nothing is decoded
        except (OSError, SyntaxError, ValueError) as e:
            return f"{where}, column 'image': cannot read image {path} ({e})"
    width, height = sizes[key]
    for col, extent, name, limit in (("x", "w", "width", width), ("y", "h", "height", height)):
        if box[col] + box[extent] > limit:
            return (f"{where}, columns '{col}' and '{extent}': the box ends at {col} + {extent} = "
                    f"{box[col] + box[extent]:g}, past the image's {name} of {limit} px ({path})")
    row["path"], row["where"] = key, where
    return None
