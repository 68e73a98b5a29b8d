"""
Public chest X-ray data sets -> this repository's manifests (see data.py for the format).

One command per data set, each reading the files exactly as they are distributed:

    python convert.py iu-xray --reports indiana_reports.csv --projections indiana_projections.csv \\
        --images images/images_normalized --out iu_xray.csv          # pairs, frontal images
    python convert.py mimic-cxr --root mimic-cxr-jpg/2.0.0 --reports mimic-cxr-reports \\
        --out mimic_cxr.csv                                         # pairs + labels + split
    python convert.py chexpert-5x200 --csv CheXpert-v1.0-small/train.csv \\
        --out chexpert_5x200.csv                                    # zero-shot set + prompts
    python convert.py ms-cxr --csv MS_CXR_Local_Alignment_v1.1.0.csv --images mimic-cxr-jpg/2.0.0 \\
        --out ms_cxr.csv                                            # phrases with boxes (grounding)

Pair manifests (IU X-Ray, MIMIC-CXR) are for train.py --train-manifest and eval.py
--retrieval-manifest; the 5x200 set and its prompt file are for eval.py --eval-manifest / --prompts;
the MS-CXR manifest is a grounding manifest (grounding.py, docs/grounding.md).
Image paths are written relative to the output CSV's folder, so the CSV and the images can move
together. Outputs are written to a temporary file and renamed at the end: an error never leaves a
half-written manifest behind. What was skipped, and why, is counted aloud.
"""

import argparse
from collections import Counter
import csv
import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from pathlib import Path

from manifests.read import ManifestError

# The 14 observations of the CheXpert labeler (Irvin et al. 2019), as CheXpert's train.csv orders
# them. MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv.gz has the same 14 (the same labeler run on
# its reports), in alphabetical order; a labels cell lists the positives in this order.
OBSERVATIONS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]

# A labeler cell: 1.0 mentioned as present, 0.0 mentioned as absent, -1.0 uncertain ("may
# represent", "cannot exclude"), blank not mentioned.
LABEL_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}


# -----------------------------------------------------------------------------
# Reading the distributed CSVs (plain or gzip-compressed)


def iter_table(path, columns):
    """Rows of a CSV as (row number, line, {column: stripped value}) for the named columns, which
    must all be in the header. A name ending in .gz is read through gzip, as MIMIC ships its CSVs.
    Every problem, including one deep inside a compressed file, is a ManifestError naming the file
    (and the line where there is one)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            for col in columns:
                if col not in header:
                    raise ManifestError(f"{path}: line 1 (header), column '{col}': missing (header is {header})")
            for col in columns:  # csv.DictReader would silently keep the last of two
                if header.count(col) > 1:
                    raise ManifestError(f"{path}: line 1 (header), column '{col}': appears {header.count(col)} times")
            index = [header.index(col) for col in columns]
            row_no = 0
            for values in reader:
                line = reader.line_num
                if not values:
                    continue  # a blank line
                row_no += 1
                if len(values) != len(header):
                    raise ManifestError(f"{path}: row {row_no} (line {line}): {len(values)} fields, "
                                        f"the header has {len(header)}")
                yield row_no, line, {col: values[i].strip() for col, i in zip(columns, index)}
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ManifestError(f"{path}: not a readable gzip file ({e})") from None
    except UnicodeDecodeError:
        raise ManifestError(_first_undecodable(path, opener)) from None
    except csv.Error as e:
        raise ManifestError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None


def _first_undecodable(path, opener):
    """The message for a file that is not UTF-8. Text is decoded in chunks of kilobytes, so the
    decoder's error does not say on which line it was: find that line by reading again, in bytes."""
    with opener(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}: line {line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                        f"{e.start + 1}; save the file as UTF-8)")
    return f"{path}: not UTF-8 text"


def _where(path, row, line, column):
    return f"{path}: row {row} (line {line}), column '{column}'"


def _label(value, where):
    if value not in LABEL_VALUES:
        raise ManifestError(f"{where}: {value!r} is not a label (1.0, 0.0, -1.0 or blank)")
    return LABEL_VALUES[value]


def _write_csv(out_csv, header, rows, if_empty="no rows to write"):
    """rows (an iterable, which may raise) -> out_csv, via a temporary file renamed at the end, so
    a failure never leaves a half-written file nor replaces a good one. No rows at all is an
    error too: if_empty, a message or a function that makes it. Returns the number of rows."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                n += 1
        if n == 0:
            raise ManifestError(if_empty() if callable(if_empty) else if_empty)
        os.replace(tmp, out_csv)
    finally:
        tmp.unlink(missing_ok=True)
    return n


# -----------------------------------------------------------------------------
# IU X-Ray (Open-I, Demner-Fushman et al. 2016): ~3,800 reports, each with a frontal and a
# lateral image, as distributed on Kaggle (indiana_reports.csv, indiana_projections.csv).


def convert_iu_xray(reports_csv, projections_csv, images_dir, out_csv):
    """IU X-Ray (Open-I) -> a pair manifest of its frontal images. indiana_reports.csv has uid,
    findings, impression (and MeSH, Problems, ...); indiana_projections.csv has uid, filename,
    projection ("Frontal" / "Lateral"). Text = "FINDINGS: ... IMPRESSION: ...". Reports with
    neither section, and images not found, are skipped and counted aloud.
    Returns the number of rows written."""
    out_csv, images_dir = Path(out_csv), Path(images_dir)
    reports = {}
    for _, _, row in iter_table(reports_csv, ["uid", "findings", "impression"]):
        parts = [f"{name.upper()}: {row[name]}" for name in ("findings", "impression") if row[name]]
        reports[row["uid"]] = " ".join(parts)
    projections = [row for _, _, row in iter_table(projections_csv, ["uid", "filename", "projection"])]
    if not images_dir.is_dir():
        raise ManifestError(f"{images_dir}: images folder not found")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    written, no_report, no_image = 0, 0, 0
    empty = {uid for uid, text in reports.items() if not text}
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        for row in projections:
            if row["projection"].lower() != "frontal":
                continue
            uid = row["uid"]
            if uid not in reports:
                no_report += 1
                continue
            if not reports[uid]:
                continue  # counted once per report in `empty`
            path = images_dir / row["filename"]
            if not path.is_file():
                no_image += 1
                continue
            w.writerow([os.path.relpath(path.resolve(), out_csv.parent.resolve()), reports[uid]])
            written += 1
    print(f"iu-xray: wrote {written} frontal image-report pairs to {out_csv}; skipped "
          f"{len(empty)} reports with empty findings and impression, {no_report} frontal images "
          f"with no report, {no_image} images not found in {images_dir}")
    return written


# -----------------------------------------------------------------------------
# MIMIC-CXR-JPG (Johnson et al. 2019): ~377,000 images of ~227,000 studies, with the free-text
# reports of MIMIC-CXR. Layout: files/p10/p10000032/s50414267/<dicom_id>.jpg for an image and
# files/p10/p10000032/s50414267.txt for its study's report ("p" + the subject id's first two digits).

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
FRONTAL_VIEWS = {"PA", "AP"}
MIMIC_SPLITS = ["train", "validate", "test"]

# A section title: a line that starts with capitals and a colon ("FINDINGS:", "IMPRESSION:",
# "FINDINGS AND IMPRESSION:", "COMPARISON:", "WET READ:"). A section runs to the next title.
SECTION_TITLE = re.compile(r"^[ \t]*([A-Z][A-Z /&]*[A-Z])[ \t]*:", re.M)


def report_sections(text):
    """A MIMIC-CXR report -> (findings, impression), each whitespace-normalised, "" when absent.
    A section whose title names IMPRESSION (also "FINDINGS AND IMPRESSION") is the impression, one
    naming FINDINGS the findings; the rest (indication, technique, comparison, wet read, ...)
    is dropped. The de-identification blanks "___" are kept as they are."""
    found = {"findings": [], "impression": []}
    titles = list(SECTION_TITLE.finditer(text))
    for m, nxt in zip(titles, titles[1:] + [None]):
        title = m.group(1)
        kind = "impression" if "IMPRESSION" in title else "findings" if "FINDING" in title else None
        if kind:
            body = " ".join(text[m.end():nxt.start() if nxt else len(text)].split())
            if body:
                found[kind].append(body)
    return " ".join(found["findings"]), " ".join(found["impression"])


def _mimic_ids(path, row_no, line, row):
    for col in ("subject_id", "study_id"):
        if not row[col].isdigit() or len(row[col]) < 2:
            raise ManifestError(f"{_where(path, row_no, line, col)}: {row[col]!r} is not a numeric id")
    return row["subject_id"], row["study_id"]


def read_mimic_labels(path, uncertain):
    """mimic-cxr-2.0.0-chexpert.csv.gz -> ({(subject, study): "name;name"}, uncertain cells seen).
    Positive: 1.0, and -1.0 too when uncertain == "positive"; 0.0 and blank are negative."""
    labels, n_uncertain = {}, 0
    for row_no, line, row in iter_table(path, ["subject_id", "study_id"] + OBSERVATIONS):
        names = []
        for name in OBSERVATIONS:
            v = _label(row[name], _where(path, row_no, line, name))
            n_uncertain += v == -1
            if v == 1 or (v == -1 and uncertain == "positive"):
                names.append(name.lower())
        labels[_mimic_ids(path, row_no, line, row)] = ";".join(names)
    return labels, n_uncertain


def mimic_report_text(path):
    """A study's report file -> "FINDINGS: ... IMPRESSION: ..." with the sections it has ("" with
    neither), or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        findings, impression = report_sections(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason})") from None
    return " ".join(f"{title}: {body}" for title, body in (("FINDINGS", findings), ("IMPRESSION", impression)) if body)


def convert_mimic_cxr(root, out_csv, reports_root=None, splits=MIMIC_SPLITS, uncertain="negative"):
    """MIMIC-CXR-JPG -> a pair manifest (image, text, [labels,] split) of its frontal images.

    root holds the three CSVs and files/; reports_root holds the reports' files/ tree (default:
    root). Text = "FINDINGS: ... IMPRESSION: ..." with the sections a report has; a study with
    neither is skipped. Labels come from the CheXpert labeler's file when root has it (else no
    labels column). Only the images of `splits` are written. Returns a Counter of what was
    written and skipped."""
    root, out_csv = Path(root), Path(out_csv)
    reports_root = Path(reports_root) if reports_root else root
    for folder in (root, reports_root):
        if not (folder / "files").is_dir():
            raise ManifestError(f"{folder}: no files/ folder (expected files/p10/p10000032/s50414267...)")
    split_path = root / MIMIC_SPLIT
    split_of = {}
    for row_no, line, row in iter_table(split_path, ["dicom_id", "split"]):
        if row["split"] not in MIMIC_SPLITS:
            raise ManifestError(f"{_where(split_path, row_no, line, 'split')}: {row['split']!r} is not "
                                f"one of {MIMIC_SPLITS}")
        split_of[row["dicom_id"]] = row["split"]
    labels_path = root / MIMIC_CHEXPERT
    labels, n_uncertain = read_mimic_labels(labels_path, uncertain) if labels_path.is_file() else (None, 0)

    meta_path = root / MIMIC_METADATA
    files = (root / "files").resolve()
    rel_files = os.path.relpath(files, out_csv.parent.resolve())
    count, views = Counter(), Counter()  # images skipped by reason; non-frontal images by view
    studies = {"no report": set(), "neither section": set(), "no labels": set()}

    def rows():
        last = None, None  # (study, its text): the metadata lists a study's images together
        for row_no, line, row in iter_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
            subject, study = key = _mimic_ids(meta_path, row_no, line, row)
            dicom = row["dicom_id"]
            if row["ViewPosition"] not in FRONTAL_VIEWS:
                views[row["ViewPosition"] or "(blank)"] += 1
                continue
            if dicom not in split_of or split_of[dicom] not in splits:
                count["no split" if dicom not in split_of else "other split"] += 1
                continue
            folder = Path(f"p{subject[:2]}", f"p{subject}")  # p10/p10000032
            if last[0] != key:
                last = key, mimic_report_text(reports_root / "files" / folder / f"s{study}.txt")
            text = last[1]
            if not text:
                reason = "no report" if text is None else "neither section"
                count[reason] += 1
                studies[reason].add(key)
                continue
            image = folder / f"s{study}" / f"{dicom}.jpg"
            if not (files / image).is_file():
                count["image not found"] += 1
                continue
            if labels is not None and key not in labels:
                studies["no labels"].add(key)  # kept, with an empty labels cell
            label = [labels.get(key, "")] if labels is not None else []
            count[split_of[dicom]] += 1
            yield [os.path.normpath(os.path.join(rel_files, image)), text] + label + [split_of[dicom]]

    header = ["image", "text"] + (["labels"] if labels is not None else []) + ["split"]

    def skipped():
        by_view = ", ".join(f"{v} {n}" for v, n in views.most_common())
        return (f"{sum(views.values())} non-frontal images ({by_view}), {count['neither section']} images "
                f"of {len(studies['neither section'])} studies whose report has neither findings nor "
                f"impression, {count['no report']} images of {len(studies['no report'])} studies with no "
                f"report file, {count['image not found']} images not found, {count['no split']} images "
                f"with no row in {MIMIC_SPLIT}, {count['other split']} images of splits not asked for")

    written = _write_csv(out_csv, header, rows(), lambda: f"{meta_path}: no rows left to write; skipped {skipped()}")
    by_split = ", ".join(f"{s} {count[s]}" for s in MIMIC_SPLITS if count[s])
    if labels is None:
        about_labels = f"no {MIMIC_CHEXPERT} in {root}, so no labels column"
    else:
        about_labels = (f"labels from {MIMIC_CHEXPERT}, {n_uncertain} uncertain (-1.0) cells read as "
                        f"{uncertain}, {len(studies['no labels'])} studies with no row there left unlabelled")
    print(f"mimic-cxr: wrote {written} frontal image-report pairs to {out_csv} ({by_split}); "
          f"{about_labels}; skipped {skipped()}")
    count["written"] = written
    count.update({f"studies: {reason}": len(keys) for reason, keys in studies.items()})
    return count


# -----------------------------------------------------------------------------
# CheXpert 5x200 (Irvin et al. 2019; the zero-shot protocol of GLoRIA, Huang et al. 2021, and
# MedCLIP, Wang et al. 2022): 200 frontal images for each of five findings, each image positive for
# exactly that one of the five, classified by comparing it with each class's prompts.

FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

# A few sentences per class, written the way report findings are phrased (the text encoder learnt
# from reports), with different severities, sides and wordings; a class is the mean of their
# embeddings (prompt ensembling, CLIP, Radford et al. 2021).
PROMPTS_5X200 = {
    "atelectasis": [
        "Atelectasis.",
        "Mild bibasilar atelectasis.",
        "Streaky opacity at the left base, likely subsegmental atelectasis.",
        "Linear atelectasis in the right lower lung.",
        "Volume loss with atelectasis of the lower lobe.",
    ],
    "cardiomegaly": [
        "Cardiomegaly.",
        "The cardiac silhouette is enlarged.",
        "Moderate cardiomegaly.",
        "Heart size is enlarged.",
        "Mild enlargement of the cardiac silhouette.",
    ],
    "consolidation": [
        "Consolidation.",
        "Focal consolidation in the right lower lobe.",
        "Dense airspace consolidation with air bronchograms.",
        "Patchy consolidation at the left lung base.",
        "Lobar consolidation in the upper lobe.",
    ],
    "edema": [
        "Pulmonary edema.",
        "Mild interstitial edema.",
        "Pulmonary vascular congestion with interstitial edema.",
        "Diffuse bilateral airspace opacities consistent with pulmonary edema.",
        "Moderate pulmonary edema with cephalization of the vessels.",
    ],
    "pleural effusion": [
        "Pleural effusion.",
        "Small left pleural effusion.",
        "Moderate right pleural effusion.",
        "Bilateral pleural effusions, larger on the right.",
        "Blunting of the costophrenic angle from a small effusion.",
    ],
}


def sample_rank(seed, path):
    """The sampling order: a hash of (seed, image path). Taking the n lowest ranks is a uniform
    random sample that depends only on the seed and the paths, not on the CSV's row order or on
    any library's random generator (whose streams may change between versions)."""
    return hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest()


def convert_chexpert_5x200(csv_path, out_csv, prompts_json=None, images_root=None, per_class=200, seed=0):
    """CheXpert's train.csv (or valid.csv) -> a classification manifest (image, label) of
    per_class frontal images per class, each positive (1.0) for its class and for none of the other
    four, none of them uncertain (-1.0) either, so its true class is not in doubt; plus the prompt
    file. Path values are relative to images_root (default: the CSV's folder's parent, as
    distributed: "CheXpert-v1.0-small/train/patient00001/..."). Returns {class: rows written}."""
    csv_path, out_csv = Path(csv_path), Path(out_csv)
    images_root = Path(images_root) if images_root else csv_path.resolve().parent.parent
    prompts_json = Path(prompts_json) if prompts_json else out_csv.with_name(out_csv.stem + "_prompts.json")
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {per_class}")
    candidates = {name: [] for name in FIVE}  # class -> [(rank, row, line, path)]
    frontal = 0
    for row_no, line, row in iter_table(csv_path, ["Path", "Frontal/Lateral"] + FIVE):
        if not row["Path"]:
            raise ManifestError(f"{_where(csv_path, row_no, line, 'Path')}: empty path")
        values = [_label(row[name], _where(csv_path, row_no, line, name)) for name in FIVE]
        if row["Frontal/Lateral"] != "Frontal":
            continue
        frontal += 1
        if values.count(1) == 1 and -1 not in values:
            candidates[FIVE[values.index(1)]].append((sample_rank(seed, row["Path"]), row_no, line, row["Path"]))
    found = ", ".join(f"{name.lower()} {len(c)}" for name, c in candidates.items())
    short = [name.lower() for name, c in candidates.items() if len(c) < per_class]
    if short:
        raise ManifestError(f"{csv_path}: too few frontal images positive for one class alone for "
                            f"--per-class {per_class}: {short} (found: {found})")
    chosen = []  # (class, row, line, path)
    for name, c in candidates.items():
        chosen += sorted((name.lower(), row_no, line, path) for _, row_no, line, path in sorted(c)[:per_class])
    missing = [(row_no, line, path) for _, row_no, line, path in chosen if not (images_root / path).is_file()]
    if missing:
        row_no, line, path = missing[0]
        raise ManifestError(f"{_where(csv_path, row_no, line, 'Path')}: image not found: {images_root / path} "
                            f"({len(missing)} of the {len(chosen)} sampled images are missing; --images "
                            f"names the folder the Path column is relative to)")
    rel_root = os.path.relpath(images_root.resolve(), out_csv.parent.resolve())
    _write_csv(out_csv, ["image", "label"], ([os.path.normpath(os.path.join(rel_root, path)), name] for name, _, _, path in chosen))
    tmp = prompts_json.with_name(prompts_json.name + ".tmp")
    tmp.write_text(json.dumps(PROMPTS_5X200, indent=2) + "\n")
    os.replace(tmp, prompts_json)
    print(f"chexpert-5x200: {frontal} frontal images in {csv_path}, positive for one of the five "
          f"alone: {found}; wrote {per_class} per class (seed {seed}) to {out_csv} and the prompts "
          f"to {prompts_json}")
    return Counter(name for name, *_ in chosen)


# -----------------------------------------------------------------------------
# MS-CXR (Boecking et al. 2022, PhysioNet: "MS-CXR: Making the Most of Text Semantics to Improve
# Biomedical Vision-Language Processing"): 1,162 phrase-box pairs on MIMIC-CXR frontal images,
# checked or drawn by radiologists, over 8 findings: the phrase-grounding benchmark of BioViL and
# the papers after it.
#
# Its CSV (MS_CXR_Local_Alignment_v1.0.0.csv in PhysioNet's version 0.1, _v1.1.0.csv in version
# 1.1.0) has one row per box: dicom_id, category_name, label_text, path, x, y, w, h, image_width,
# image_height, and (v1.1.0) split. path is relative to the MIMIC-CXR-JPG folder
# ("files/p10/p10233088/s54276838/<dicom_id>.jpg"); (x, y) is the box's top-left corner and w, h
# its size, in pixels of an image_width x image_height image. This layout was checked against
# public copies of the v1.1.0 file's header and of code that reads v1.0.0 (dicom_id, label_text,
# x, y, w, h, image_width, image_height), not against PhysioNet's files themselves, which need
# credentialed access; the converter names any column it misses.

MS_CXR_COLUMNS = ["category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


def _csv_header(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [name.strip() for name in next(csv.reader(f), [])]


def _number(value, where):
    try:
        v = float(value)
    except ValueError:
        raise ManifestError(f"{where}: {value!r} is not a number") from None
    if not v == v or v in (float("inf"), float("-inf")):
        raise ManifestError(f"{where}: {value!r} is not a finite number")
    return v


def _num_text(v):
    """A box coordinate as written: 196 stays "196", a rescaled 98.25 is "98.25"."""
    return str(int(v)) if v == int(v) else f"{v:.2f}".rstrip("0")


def _ms_cxr_box(path, row_no, line, row):
    """One row's box (x, y, w, h) and image size, checked: numbers, a positive size, inside the image."""
    v = {col: _number(row[col], _where(path, row_no, line, col))
         for col in ("x", "y", "w", "h", "image_width", "image_height")}
    for col in ("w", "h", "image_width", "image_height"):
        if v[col] <= 0:
            raise ManifestError(f"{_where(path, row_no, line, col)}: {row[col]} is not a positive size")
    for col in ("x", "y"):
        if v[col] < 0:
            raise ManifestError(f"{_where(path, row_no, line, col)}: {row[col]} is outside the image (must be >= 0)")
    for col, extent, size in (("x", "w", "image_width"), ("y", "h", "image_height")):
        if v[col] + v[extent] > v[size]:
            raise ManifestError(f"{path}: row {row_no} (line {line}), columns '{col}' and '{extent}': the box "
                                f"ends at {col} + {extent} = {v[col] + v[extent]:g}, past {size} {row[size]}")
    return v


def convert_ms_cxr(csv_path, images_root, out_csv, splits=None):
    """MS-CXR's CSV -> a grounding manifest (image, text, x, y, w, h, label[, split]), one row per
    box, as grounding.read_grounding_manifest reads it: text = label_text, label = category_name
    in lower case, split copied when the CSV has one (v1.1.0; `splits` keeps only those). Images
    are images_root / path (images_root: the MIMIC-CXR-JPG folder holding files/); an image not
    found is skipped and counted. A copy of MIMIC-CXR-JPG resized as a whole (e.g. to 512 px)
    works too: each image's size is read from its file's header, and when it differs from
    image_width x image_height by one scale factor its boxes are rescaled to it. Every bad row is
    a ManifestError naming the file, row, line and column. Returns a Counter of what was written."""
    from PIL import Image

    csv_path, images_root, out_csv = Path(csv_path), Path(images_root), Path(out_csv)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    if not images_root.is_dir():
        raise ManifestError(f"{images_root}: images folder not found (the MIMIC-CXR-JPG folder that holds files/)")
    has_split = "split" in _csv_header(csv_path)
    if splits and not has_split:
        raise ManifestError(f"{csv_path}: line 1 (header), column 'split': missing, so --splits cannot "
                            f"choose (MS-CXR v1.0.0 has no split; v1.1.0 does)")
    count, categories, sizes = Counter(), Counter(), {}
    rel_root = os.path.relpath(images_root.resolve(), out_csv.parent.resolve())

    def rows():
        for row_no, line, row in iter_table(csv_path, MS_CXR_COLUMNS + (["split"] if has_split else [])):
            v = _ms_cxr_box(csv_path, row_no, line, row)
            for col in ("label_text", "category_name", "path"):
                if not row[col]:
                    raise ManifestError(f"{_where(csv_path, row_no, line, col)}: empty")
            if splits and row["split"] not in splits:
                count["other split"] += 1
                continue
            image = images_root / row["path"]
            if row["path"] not in sizes:
                try:
                    with Image.open(image) as im:
                        sizes[row["path"]] = im.size  # from the header; nothing is decoded
                except FileNotFoundError:
                    sizes[row["path"]] = None
                except (OSError, SyntaxError, ValueError) as e:
                    raise ManifestError(f"{_where(csv_path, row_no, line, 'path')}: cannot read image "
                                        f"{image} ({e})") from None
            if sizes[row["path"]] is None:
                count["image not found"] += 1
                continue
            (fw, fh), (w0, h0) = sizes[row["path"]], (v["image_width"], v["image_height"])
            sx, sy = fw / w0, fh / h0
            if abs(sx / sy - 1) > 0.01:
                raise ManifestError(f"{_where(csv_path, row_no, line, 'image_width')}: the image {image} is "
                                    f"{fw} x {fh} px, the CSV's image_width x image_height {w0:g} x {h0:g}: "
                                    f"not the same picture at another scale")
            x, y = round(v["x"] * sx, 2), round(v["y"] * sy, 2)
            box = [x, y, min(round(v["w"] * sx, 2), fw - x), min(round(v["h"] * sy, 2), fh - y)]
            count["rescaled" if (fw, fh) != (w0, h0) else "as given"] += 1
            categories[row["category_name"].lower()] += 1
            yield ([os.path.normpath(os.path.join(rel_root, row["path"])), row["label_text"]]
                   + [_num_text(b) for b in box] + [row["category_name"].lower()]
                   + ([row["split"]] if has_split else []))

    header = ["image", "text", "x", "y", "w", "h", "label"] + (["split"] if has_split else [])
    written = _write_csv(out_csv, header, rows(),
                         lambda: f"{csv_path}: no rows left to write ({count['image not found']} boxes' images "
                                 f"not found under {images_root}, {count['other split']} of other splits)")
    by_class = ", ".join(f"{name} {n}" for name, n in sorted(categories.items()))
    print(f"ms-cxr: wrote {written} boxes on {sum(1 for s in sizes.values() if s)} images to {out_csv} "
          f"({by_class}); {count['rescaled']} boxes rescaled to resized images; skipped "
          f"{count['image not found']} boxes whose image is not under {images_root}"
          + (f", {count['other split']} boxes of other splits" if splits else ""))
    count["written"] = written
    return count


# -----------------------------------------------------------------------------
# Command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("iu-xray", help="IU X-Ray (Open-I) CSVs -> a manifest of frontal images")
    p.add_argument("--reports", required=True, help="indiana_reports.csv")
    p.add_argument("--projections", required=True, help="indiana_projections.csv")
    p.add_argument("--images", required=True, help="folder holding the images named in projections")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p = sub.add_parser("mimic-cxr", help="MIMIC-CXR-JPG -> a manifest of frontal images with split and labels")
    p.add_argument("--root", required=True,
                   help=f"MIMIC-CXR-JPG folder: {MIMIC_METADATA}, {MIMIC_SPLIT}, optional {MIMIC_CHEXPERT}, files/")
    p.add_argument("--reports", default=None,
                   help="folder holding the reports' files/pNN/pNNNNNNNN/sNNNNNNNN.txt (MIMIC-CXR's "
                        "mimic-cxr-reports.zip, unpacked; default: --root)")
    p.add_argument("--splits", default=",".join(MIMIC_SPLITS),
                   help="comma-separated splits to write (default: %(default)s); train.py trains on "
                        "every row, so write --splits train for training and --splits test for eval.py")
    p.add_argument("--uncertain", choices=["negative", "positive"], default="negative",
                   help="how to read the labeler's uncertain (-1.0) cells (default: %(default)s)")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p = sub.add_parser("chexpert-5x200", help="CheXpert train.csv -> a 5x200 zero-shot manifest and prompt file")
    p.add_argument("--csv", required=True, help="CheXpert's train.csv (or valid.csv)")
    p.add_argument("--images", default=None,
                   help="folder the Path column is relative to (default: the CSV's folder's parent)")
    p.add_argument("--per-class", type=int, default=200, help="images per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--out", required=True, help="classification manifest CSV to write")
    p.add_argument("--prompts", default=None, help="prompt JSON to write (default: beside --out, <name>_prompts.json)")
    p = sub.add_parser("ms-cxr", help="MS-CXR's CSV -> a grounding manifest (phrases with boxes)")
    p.add_argument("--csv", required=True, help="MS_CXR_Local_Alignment_v1.0.0.csv or _v1.1.0.csv")
    p.add_argument("--images", required=True,
                   help="the MIMIC-CXR-JPG folder its path column is relative to (the one holding files/)")
    p.add_argument("--splits", default=None,
                   help="comma-separated values of v1.1.0's split column to keep (default: every row, "
                        "as BioViL evaluates on the whole set)")
    p.add_argument("--out", required=True, help="grounding manifest CSV to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "iu-xray":
            convert_iu_xray(args.reports, args.projections, args.images, args.out)
        elif args.command == "mimic-cxr":
            splits = [s.strip() for s in args.splits.split(",") if s.strip()]
            unknown = [s for s in splits if s not in MIMIC_SPLITS]
            if unknown or not splits:
                parser.error(f"--splits {args.splits!r}: each must be one of {MIMIC_SPLITS}")
            convert_mimic_cxr(args.root, args.out, args.reports, splits, args.uncertain)
        elif args.command == "ms-cxr":
            splits = [x.strip() for x in args.splits.split(",") if x.strip()] if args.splits else None
            convert_ms_cxr(args.csv, args.images, args.out, splits)
        else:
            if args.per_class < 1:
                parser.error(f"--per-class must be at least 1, got {args.per_class}")
            convert_chexpert_5x200(args.csv, args.out, args.prompts, args.images, args.per_class, args.seed)
    except (ManifestError, OSError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"convert.py {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
