"""
MIMIC-CXR-JPG (Johnson et al. 2019) -> a pair manifest (image, text, [labels,] split) of its
frontal images: ~377,000 images of ~227,000 studies, with the free-text reports of MIMIC-CXR.
Run it as `python -m tools.convert mimic-cxr ...`.

Layout: files/p10/p10000032/s50414267/<dicom_id>.jpg for an image and
files/p10/p10000032/s50414267.txt for its study's report ("p" + the subject id's first two digits).
"""

import os
import re
from collections import Counter
from pathlib import Path

from manifests.read import ManifestError
from tools.tables import OBSERVATIONS, iter_table, label_value, relative_to_csv, where, write_csv

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
FRONTAL_VIEWS = {"PA", "AP"}
MIMIC_SPLITS = ["train", "validate", "test"]

# A section title: a line that starts with capitals and a colon ("FINDINGS:", "IMPRESSION:",
# "FINDINGS AND IMPRESSION:", "COMPARISON:", "WET READ:"). A section runs to the next title.
SECTION_TITLE = re.compile(r"^[ \t]*([A-Z][A-Z /&]*[A-Z])[ \t]*:", re.M)


# -----------------------------------------------------------------------------
# Reports, labels and splits


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


def mimic_ids(path, row_no, line, row):
    """A row's (subject_id, study_id), each checked to be a number of at least two digits."""
    for col in ("subject_id", "study_id"):
        if not row[col].isdigit() or len(row[col]) < 2:
            raise ManifestError(f"{where(path, row_no, line, col)}: {row[col]!r} is not a numeric id")
    return row["subject_id"], row["study_id"]


def read_mimic_labels(path, uncertain):
    """mimic-cxr-2.0.0-chexpert.csv.gz -> ({(subject, study): "name;name"}, uncertain cells seen).
    Positive: 1.0, and -1.0 too when uncertain == "positive"; 0.0 and blank are negative."""
    labels, n_uncertain = {}, 0
    for row_no, line, row in iter_table(path, ["subject_id", "study_id"] + OBSERVATIONS):
        names = []
        for name in OBSERVATIONS:
            v = label_value(row[name], where(path, row_no, line, name))
            n_uncertain += v == -1
            if v == 1 or (v == -1 and uncertain == "positive"):
                names.append(name.lower())
        labels[mimic_ids(path, row_no, line, row)] = ";".join(names)
    return labels, n_uncertain


def read_mimic_splits(path):
    """mimic-cxr-2.0.0-split.csv.gz -> {dicom_id: split}, each split one of MIMIC_SPLITS."""
    split_of = {}
    for row_no, line, row in iter_table(path, ["dicom_id", "split"]):
        if row["split"] not in MIMIC_SPLITS:
            raise ManifestError(f"{where(path, row_no, line, 'split')}: {row['split']!r} is not "
                                f"one of {MIMIC_SPLITS}")
        split_of[row["dicom_id"]] = row["split"]
    return split_of


# -----------------------------------------------------------------------------
# The pairs


class MimicPairs:
    """The manifest rows of one conversion, and a tally of what it skipped: `count` has the images
    skipped by reason and the images written by split, `views` the non-frontal images by view, and
    `studies` the studies with no report, with neither section, and with no labels row."""

    def __init__(self, root, reports_root, out_csv, splits, split_of, labels):
        self.reports_root, self.splits, self.split_of, self.labels = reports_root, splits, split_of, labels
        self.files = (root / "files").resolve()
        self.rel_files = relative_to_csv(self.files, out_csv)
        self.count, self.views = Counter(), Counter()
        self.studies = {"no report": set(), "neither section": set(), "no labels": set()}

    def header(self):
        return ["image", "text"] + (["labels"] if self.labels is not None else []) + ["split"]

    def _wanted(self, row):
        """Whether a metadata row is a frontal image of an asked split; counts it if not."""
        if row["ViewPosition"] not in FRONTAL_VIEWS:
            self.views[row["ViewPosition"] or "(blank)"] += 1
            return False
        dicom = row["dicom_id"]
        if dicom not in self.split_of or self.split_of[dicom] not in self.splits:
            self.count["no split" if dicom not in self.split_of else "other split"] += 1
            return False
        return True

    def rows(self, meta_path):
        """The manifest's rows, from the metadata file's rows in their order."""
        last = None, None  # (study, its text): the metadata lists a study's images together
        for row_no, line, row in iter_table(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"]):
            subject, study = key = mimic_ids(meta_path, row_no, line, row)
            if not self._wanted(row):
                continue
            folder = Path(f"p{subject[:2]}", f"p{subject}")  # p10/p10000032
            if last[0] != key:
                last = key, mimic_report_text(self.reports_root / "files" / folder / f"s{study}.txt")
            text = last[1]
            if not text:
                reason = "no report" if text is None else "neither section"
                self.count[reason] += 1
                self.studies[reason].add(key)
                continue
            image = folder / f"s{study}" / f"{row['dicom_id']}.jpg"
            if not (self.files / image).is_file():
                self.count["image not found"] += 1
                continue
            yield ([os.path.normpath(os.path.join(self.rel_files, image)), text] + self._labels(key)
                   + [self._split(row)])

    def _labels(self, key):
        """The labels cell of a study's row: [] when there is no labels column."""
        if self.labels is None:
            return []
        if key not in self.labels:
            self.studies["no labels"].add(key)  # kept, with an empty labels cell
        return [self.labels.get(key, "")]

    def _split(self, row):
        """The split of a row that is written, counted."""
        split = self.split_of[row["dicom_id"]]
        self.count[split] += 1
        return split

    def skipped(self):
        """What was skipped, in words."""
        count, studies = self.count, self.studies
        by_view = ", ".join(f"{v} {n}" for v, n in self.views.most_common())
        return (f"{sum(self.views.values())} non-frontal images ({by_view}), {count['neither section']} images "
                f"of {len(studies['neither section'])} studies whose report has neither findings nor "
                f"impression, {count['no report']} images of {len(studies['no report'])} studies with no "
                f"report file, {count['image not found']} images not found, {count['no split']} images "
                f"with no row in {MIMIC_SPLIT}, {count['other split']} images of splits not asked for")


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
    split_of = read_mimic_splits(root / MIMIC_SPLIT)
    labels_path = root / MIMIC_CHEXPERT
    labels, n_uncertain = read_mimic_labels(labels_path, uncertain) if labels_path.is_file() else (None, 0)

    meta_path = root / MIMIC_METADATA
    pairs = MimicPairs(root, reports_root, out_csv, splits, split_of, labels)
    written = write_csv(out_csv, pairs.header(), pairs.rows(meta_path),
                        lambda: f"{meta_path}: no rows left to write; skipped {pairs.skipped()}")
    count = pairs.count
    by_split = ", ".join(f"{s} {count[s]}" for s in MIMIC_SPLITS if count[s])
    if labels is None:
        about_labels = f"no {MIMIC_CHEXPERT} in {root}, so no labels column"
    else:
        about_labels = (f"labels from {MIMIC_CHEXPERT}, {n_uncertain} uncertain (-1.0) cells read as "
                        f"{uncertain}, {len(pairs.studies['no labels'])} studies with no row there left unlabelled")
    print(f"mimic-cxr: wrote {written} frontal image-report pairs to {out_csv} ({by_split}); "
          f"{about_labels}; skipped {pairs.skipped()}")
    count["written"] = written
    count.update({f"studies: {reason}": len(keys) for reason, keys in pairs.studies.items()})
    return count
