"""
MS-CXR (Boecking et al. 2022, PhysioNet: "MS-CXR: Making the Most of Text Semantics to Improve
Biomedical Vision-Language Processing") -> a grounding manifest: 1,162 phrase-box pairs on
MIMIC-CXR frontal images, checked or drawn by radiologists, over 8 findings: the phrase-grounding
benchmark of BioViL and the papers after it. Run it as `python -m tools.convert ms-cxr ...`.

Its CSV (MS_CXR_Local_Alignment_v1.0.0.csv in PhysioNet's version 0.1, _v1.1.0.csv in version
1.1.0) has one row per box: dicom_id, category_name, label_text, path, x, y, w, h, image_width,
image_height, and (v1.1.0) split. path is relative to the MIMIC-CXR-JPG folder
("files/p10/p10233088/s54276838/<dicom_id>.jpg"); (x, y) is the box's top-left corner and w, h
its size, in pixels of an image_width x image_height image. This layout was checked against
public copies of the v1.1.0 file's header and of code that reads v1.0.0 (dicom_id, label_text,
x, y, w, h, image_width, image_height), not against PhysioNet's files themselves, which need
credentialed access; the converter names any column it misses.
"""

import os
from collections import Counter
from pathlib import Path

from manifests.read import ManifestError
from tools.tables import csv_header, iter_table, relative_to_csv, where, write_csv

MS_CXR_COLUMNS = ["category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


# -----------------------------------------------------------------------------
# One row's box


def _number(value, at):
    try:
        v = float(value)
    except ValueError:
        raise ManifestError(f"{at}: {value!r} is not a number") from None
    if not v == v or v in (float("inf"), float("-inf")):
        raise ManifestError(f"{at}: {value!r} is not a finite number")
    return v


def _num_text(v):
    """A box coordinate as written: 196 stays "196", a rescaled 98.25 is "98.25"."""
    return str(int(v)) if v == int(v) else f"{v:.2f}".rstrip("0")


def _ms_cxr_box(path, row_no, line, row):
    """One row's box (x, y, w, h) and image size, checked: numbers, a positive size, inside the image."""
    v = {col: _number(row[col], where(path, row_no, line, col))
         for col in ("x", "y", "w", "h", "image_width", "image_height")}
    for col in ("w", "h", "image_width", "image_height"):
        if v[col] <= 0:
            raise ManifestError(f"{where(path, row_no, line, col)}: {row[col]} is not a positive size")
    for col in ("x", "y"):
        if v[col] < 0:
            raise ManifestError(f"{where(path, row_no, line, col)}: {row[col]} is outside the image (must be >= 0)")
    for col, extent, size in (("x", "w", "image_width"), ("y", "h", "image_height")):
        if v[col] + v[extent] > v[size]:
            raise ManifestError(f"{path}: row {row_no} (line {line}), columns '{col}' and '{extent}': the box "
                                f"ends at {col} + {extent} = {v[col] + v[extent]:g}, past {size} {row[size]}")
    return v


def _rescaled_box(v, size, at, image):
    """The box of a row's checked values v on the image file of `size` (width, height): the same
    when the file has the CSV's image_width x image_height, scaled to it when it is the same picture
    at another scale, an error otherwise. Returns [x, y, w, h], each kept inside the image."""
    (fw, fh), (w0, h0) = size, (v["image_width"], v["image_height"])
    sx, sy = fw / w0, fh / h0
    if abs(sx / sy - 1) > 0.01:
        raise ManifestError(f"{at}: the image {image} is {fw} x {fh} px, the CSV's image_width x "
                            f"image_height {w0:g} x {h0:g}: not the same picture at another scale")
    x, y = round(v["x"] * sx, 2), round(v["y"] * sy, 2)
    return [x, y, min(round(v["w"] * sx, 2), fw - x), min(round(v["h"] * sy, 2), fh - y)]


# -----------------------------------------------------------------------------
# The manifest


class MsCxrBoxes:
    """The manifest rows of one conversion: `count` tallies the boxes written as given, rescaled,
    skipped for a missing image or for another split; `categories` the boxes by class; `sizes` the
    (width, height) of each image file read, None for one not found."""

    def __init__(self, csv_path, images_root, out_csv, splits, has_split):
        self.csv_path, self.images_root, self.splits, self.has_split = csv_path, images_root, splits, has_split
        self.rel_root = relative_to_csv(images_root, out_csv)
        self.count, self.categories, self.sizes = Counter(), Counter(), {}

    def header(self):
        return ["image", "text", "x", "y", "w", "h", "label"] + (["split"] if self.has_split else [])

    def _image_size(self, row_no, line, path):
        """The (width, height) of images_root / path from its file's header (nothing is decoded),
        read once per image; None when there is no such file."""
        from PIL import Image

        if path not in self.sizes:
            image = self.images_root / path
            try:
                with Image.open(image) as im:
                    self.sizes[path] = im.size
            except FileNotFoundError:
                self.sizes[path] = None
            except (OSError, SyntaxError, ValueError) as e:
                raise ManifestError(f"{where(self.csv_path, row_no, line, 'path')}: cannot read image "
                                    f"{image} ({e})") from None
        return self.sizes[path]

    def rows(self):
        """The manifest's rows, one per box, in the CSV's order."""
        csv_path = self.csv_path
        for row_no, line, row in iter_table(csv_path, MS_CXR_COLUMNS + (["split"] if self.has_split else [])):
            v = _ms_cxr_box(csv_path, row_no, line, row)
            for col in ("label_text", "category_name", "path"):
                if not row[col]:
                    raise ManifestError(f"{where(csv_path, row_no, line, col)}: empty")
            if self.splits and row["split"] not in self.splits:
                self.count["other split"] += 1
                continue
            size = self._image_size(row_no, line, row["path"])
            if size is None:
                self.count["image not found"] += 1
                continue
            box = _rescaled_box(v, size, where(csv_path, row_no, line, "image_width"),
                                self.images_root / row["path"])
            self.count["rescaled" if size != (v["image_width"], v["image_height"]) else "as given"] += 1
            self.categories[row["category_name"].lower()] += 1
            yield ([os.path.normpath(os.path.join(self.rel_root, row["path"])), row["label_text"]]
                   + [_num_text(b) for b in box] + [row["category_name"].lower()]
                   + ([row["split"]] if self.has_split else []))


def convert_ms_cxr(csv_path, images_root, out_csv, splits=None):
    """MS-CXR's CSV -> a grounding manifest (image, text, x, y, w, h, label[, split]), one row per
    box, as manifests.grounding.read_grounding_manifest reads it: text = label_text, label = category_name
    in lower case, split copied when the CSV has one (v1.1.0; `splits` keeps only those). Images
    are images_root / path (images_root: the MIMIC-CXR-JPG folder holding files/); an image not
    found is skipped and counted. A copy of MIMIC-CXR-JPG resized as a whole (e.g. to 512 px)
    works too: each image's size is read from its file's header, and when it differs from
    image_width x image_height by one scale factor its boxes are rescaled to it. Every bad row is
    a ManifestError naming the file, row, line and column. Returns a Counter of what was written."""
    csv_path, images_root, out_csv = Path(csv_path), Path(images_root), Path(out_csv)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    if not images_root.is_dir():
        raise ManifestError(f"{images_root}: images folder not found (the MIMIC-CXR-JPG folder that holds files/)")
    has_split = "split" in csv_header(csv_path)
    if splits and not has_split:
        raise ManifestError(f"{csv_path}: line 1 (header), column 'split': missing, so --splits cannot "
                            f"choose (MS-CXR v1.0.0 has no split; v1.1.0 does)")
    boxes = MsCxrBoxes(csv_path, images_root, out_csv, splits, has_split)
    count = boxes.count
    written = write_csv(out_csv, boxes.header(), boxes.rows(),
                        lambda: f"{csv_path}: no rows left to write ({count['image not found']} boxes' images "
                                f"not found under {images_root}, {count['other split']} of other splits)")
    by_class = ", ".join(f"{name} {n}" for name, n in sorted(boxes.categories.items()))
    print(f"ms-cxr: wrote {written} boxes on {sum(1 for s in boxes.sizes.values() if s)} images to {out_csv} "
          f"({by_class}); {count['rescaled']} boxes rescaled to resized images; skipped "
          f"{count['image not found']} boxes whose image is not under {images_root}"
          + (f", {count['other split']} boxes of other splits" if splits else ""))
    count["written"] = written
    return count
