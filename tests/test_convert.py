"""Tests for tools/convert.py and the converters beside it, each on a tiny fake of a public data set
written in its real layout (MIMIC's gzipped CSVs written with gzip, report .txt files, CheXpert's
train.csv, tiny images). MS-CXR's converter has its own file, test_convert_ms_cxr.py."""

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import chexpert_5x200, convert, iu_xray, mimic_cxr, tables  # noqa: E402
from manifests import read as manifest  # noqa: E402
from evaluation import sets  # noqa: E402
from manifests.read import ManifestError  # noqa: E402


def _write_csv(path, header, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _image(path, value=128, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path.name


# -----------------------------------------------------------------------------
# Reading the distributed CSVs


def test_iter_table_accepts_bom_crlf_quoted_newlines_and_gzip(tmp_path):
    text = '\ufeffuid,findings,extra\r\n 1 ,"Clear.\r\nNo effusion.",x\r\n\r\n2,,y\r\n'
    (tmp_path / "t.csv").write_bytes(text.encode("utf-8"))
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    for name in ("t.csv", "t.csv.gz"):
        rows = list(tables.iter_table(tmp_path / name, ["findings", "uid"]))
        # (row, line, cells): the quoted line break is kept, the blank line skipped, cells stripped
        assert rows == [(1, 3, {"findings": "Clear.\r\nNo effusion.", "uid": "1"}),
                        (2, 5, {"findings": "", "uid": "2"})], name


# -----------------------------------------------------------------------------
# IU X-Ray


def test_convert_iu_xray_on_a_fake(tmp_path, capsys):
    images = tmp_path / "images"
    header = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
    _write_csv(tmp_path / "indiana_reports.csv", header, [
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "", "", "The lungs are clear.", "Normal chest."],
        ["2", "Cardiomegaly", "Cardiomegaly", "", "", "", "", "Cardiomegaly."],
        ["3", "", "", "", "", "", "", ""],  # nothing to learn from: skipped, and counted
        ["4", "", "", "", "", "", "Small left effusion.", ""]])
    proj = [["1", "1_IM-0001-4001.dcm.png", "Frontal"], ["1", "1_IM-0001-3001.dcm.png", "Lateral"],
            ["2", "2_IM-0652-1001.dcm.png", "Frontal"], ["2", "2_IM-0652-2001.dcm.png", "Lateral"],
            ["3", "3_IM-1384-1001.dcm.png", "Frontal"], ["4", "4_IM-2000-1001.dcm.png", "Frontal"]]
    _write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"], proj)
    for _, name, _ in proj:
        _image(images / name)
    out = tmp_path / "out" / "manifest.csv"
    n = iu_xray.convert_iu_xray(tmp_path / "indiana_reports.csv", tmp_path / "indiana_projections.csv", images, out)
    assert n == 3
    assert "skipped 1 reports with empty findings and impression" in capsys.readouterr().out
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["FINDINGS: The lungs are clear. IMPRESSION: Normal chest.",
                                        "IMPRESSION: Cardiomegaly.", "FINDINGS: Small left effusion."]
    assert [Path(r["image"]).name for r in rows] == ["1_IM-0001-4001.dcm.png", "2_IM-0652-1001.dcm.png",
                                                     "4_IM-2000-1001.dcm.png"]
    m = manifest.read_pair_manifest(out, 16)  # the converter's output is a valid manifest
    assert m["images"].shape == (3, 1, 16, 16)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        convert.main(["iu-xray", "--reports", str(tmp_path / "nope.csv"), "--projections", "p.csv",
                      "--images", ".", "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "nope.csv" in err and len(err.strip().splitlines()) == 1


# -----------------------------------------------------------------------------
# MIMIC-CXR-JPG

REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.\tThe
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
REPORT_IMPRESSION = " FINAL REPORT\n INDICATION: Cough.\n\n IMPRESSION: Heart size is normal.  Lungs are clear.\n"
REPORT_FINDINGS = "WET READ: ___ ___ 10:15 AM\n  Hazy opacity, ?edema.\n\nFINDINGS: Patchy opacity at the right\nbase.\n"
REPORT_NEITHER = "                                 FINAL REPORT\n EXAMINATION: CHEST (PORTABLE AP)\n INDICATION: ___\n"
REPORT_COMBINED = "FINDINGS AND IMPRESSION:  Small   bilateral pleural effusions.\n\nNOTIFICATION: Called ___.\n"

# (dicom, subject, study, view, split); reports and labels per (subject, study) below
MIMIC_IMAGES = [
    ("d1", "10000032", "50414267", "PA", "train"),
    ("d2", "10000032", "50414267", "LATERAL", "train"),   # not frontal
    ("d3", "10000032", "53189527", "AP", "train"),
    ("d4", "11000011", "56699142", "PA", "validate"),
    ("d5", "12000022", "57375967", "PA", "test"),         # report with neither section
    ("d6", "12000022", "58000001", "PA", "test"),         # no report file
    ("d7", "13000033", "59000002", "AP", "test"),         # image file missing
    ("d8", "13000033", "59000003", "PA", "test"),         # no CheXpert row
    ("d9", "13000033", "59000003", "", "test"),           # blank view: not frontal
    ("d10", "13000033", "59000003", "LL", "test"),        # not frontal
]
MIMIC_REPORTS = {"50414267": REPORT_FULL, "53189527": REPORT_IMPRESSION, "56699142": REPORT_FINDINGS,
                 "57375967": REPORT_NEITHER, "59000002": REPORT_IMPRESSION, "59000003": REPORT_COMBINED}
# MIMIC's chexpert file lists the observations alphabetically, not in CheXpert's order
MIMIC_LABEL_COLUMNS = ["subject_id", "study_id"] + sorted(tables.OBSERVATIONS)
MIMIC_LABELS = {  # (subject, study) -> {observation: value}; every other cell blank
    ("10000032", "50414267"): {"Pleural Effusion": "1.0", "Lung Opacity": "1.0", "Edema": "0.0"},
    ("10000032", "53189527"): {"No Finding": "1.0"},
    ("11000011", "56699142"): {"Lung Opacity": "1.0", "Edema": "-1.0", "Atelectasis": "-1.0"},
    ("12000022", "57375967"): {"Cardiomegaly": "1.0"},
    ("13000033", "59000002"): {"Support Devices": "1.0"},
}


def _mimic(root, reports=None, chexpert=True, label_rows=None):
    """A fake MIMIC-CXR-JPG folder; reports go to `reports`/files (default: root/files)."""
    reports = reports or root
    _write_csv(root / mimic_cxr.MIMIC_METADATA, ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                                               "ViewPosition", "Rows", "Columns"],
               [[d, sub, st, "CHEST (PA AND LAT)", view, "3056", "2544"] for d, sub, st, view, _ in MIMIC_IMAGES], gz=True)
    _write_csv(root / mimic_cxr.MIMIC_SPLIT, ["dicom_id", "study_id", "subject_id", "split"],
               [[d, st, sub, split] for d, sub, st, _, split in MIMIC_IMAGES], gz=True)
    if chexpert:
        rows = label_rows or [[sub, st] + [cells.get(name, "") for name in MIMIC_LABEL_COLUMNS[2:]]
                              for (sub, st), cells in MIMIC_LABELS.items()]
        _write_csv(root / mimic_cxr.MIMIC_CHEXPERT, MIMIC_LABEL_COLUMNS, rows, gz=True)
    for d, sub, st, _, _ in MIMIC_IMAGES:
        if d != "d7":
            _image(root / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{st}" / f"{d}.jpg")
        if st in MIMIC_REPORTS:
            path = reports / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{st}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(MIMIC_REPORTS[st])
    return root


TEXT_FULL = ("FINDINGS: There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
             "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette is normal. "
             "IMPRESSION: No acute cardiopulmonary process.")
TEXT_IMPRESSION = "IMPRESSION: Heart size is normal. Lungs are clear."


def _img(sub, st, d):
    return os.path.join("..", "mimic", "files", f"p{sub[:2]}", f"p{sub}", f"s{st}", f"{d}.jpg")


def test_report_sections():
    assert mimic_cxr.report_sections(REPORT_FULL) == (
        TEXT_FULL.split(" IMPRESSION: ")[0][len("FINDINGS: "):], "No acute cardiopulmonary process.")
    assert mimic_cxr.report_sections(REPORT_FINDINGS) == ("Patchy opacity at the right base.", "")  # wet read dropped
    assert mimic_cxr.report_sections(REPORT_COMBINED) == ("", "Small bilateral pleural effusions.")
    assert mimic_cxr.report_sections(REPORT_NEITHER) == ("", "")
    assert mimic_cxr.report_sections("FINDINGS:\n\n   \nIMPRESSION:  \n") == ("", "")  # titles, no text


@pytest.mark.parametrize("uncertain", ["negative", "positive"])
def test_mimic_manifest_rows(tmp_path, capsys, uncertain):
    _mimic(tmp_path / "mimic")
    out = tmp_path / "out" / "mimic.csv"
    count = mimic_cxr.convert_mimic_cxr(tmp_path / "mimic", out, uncertain=uncertain)
    d4_labels = "lung opacity" if uncertain == "negative" else "lung opacity;edema;atelectasis"
    assert _read_csv(out) == [
        ["image", "text", "labels", "split"],
        [_img("10000032", "50414267", "d1"), TEXT_FULL, "lung opacity;pleural effusion", "train"],
        [_img("10000032", "53189527", "d3"), TEXT_IMPRESSION, "no finding", "train"],
        [_img("11000011", "56699142", "d4"), "FINDINGS: Patchy opacity at the right base.", d4_labels, "validate"],
        [_img("13000033", "59000003", "d8"), "IMPRESSION: Small bilateral pleural effusions.", "", "test"],
    ]
    assert (count["written"], count["neither section"], count["no report"], count["image not found"],
            count["studies: no labels"]) == (4, 1, 1, 1, 1)
    said = capsys.readouterr().out
    assert "wrote 4 frontal image-report pairs" in said and "(train 2, validate 1, test 1)" in said
    assert "3 non-frontal images (LATERAL 1, (blank) 1, LL 1)" in said
    assert f"2 uncertain (-1.0) cells read as {uncertain}" in said
    assert "1 images of 1 studies whose report has neither" in said and "1 images not found" in said
    assert not list(out.parent.glob("*.tmp"))  # the temporary file was renamed


def test_mimic_without_labels_separate_reports_and_one_split(tmp_path, capsys):
    _mimic(tmp_path / "mimic", reports=tmp_path / "reports", chexpert=False)
    out = tmp_path / "out" / "test.csv"
    convert.main(["mimic-cxr", "--root", str(tmp_path / "mimic"), "--reports", str(tmp_path / "reports"),
                  "--splits", "train,test", "--out", str(out)])
    assert _read_csv(out) == [
        ["image", "text", "split"],
        [_img("10000032", "50414267", "d1"), TEXT_FULL, "train"],
        [_img("10000032", "53189527", "d3"), TEXT_IMPRESSION, "train"],
        [_img("13000033", "59000003", "d8"), "IMPRESSION: Small bilateral pleural effusions.", "test"],
    ]
    said = capsys.readouterr().out
    assert "so no labels column" in said and "1 images of splits not asked for" in said
    # the output is a manifest train.py and eval.py read (a labels column of CheXpert's names is
    # only read back once the manifest reader takes any finding names)
    m = manifest.read_pair_manifest(out, 16)
    assert m["images"].shape == (3, 1, 16, 16) and m["splits"] == ["train", "train", "test"]
    assert m["texts"][0] == TEXT_FULL


def _gz_bytes_cut(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


@pytest.mark.parametrize("case,fragment", [
    ("missing metadata", "mimic-cxr-2.0.0-metadata.csv.gz: file not found"),
    ("no files folder", "mimic: no files/ folder"),
    ("missing column", "mimic-cxr-2.0.0-split.csv.gz: line 1 (header), column 'split': missing"),
    ("twice a column", "mimic-cxr-2.0.0-split.csv.gz: line 1 (header), column 'split': appears 2 times"),
    ("truncated gzip", "mimic-cxr-2.0.0-metadata.csv.gz: not a readable gzip file"),
    ("not gzip", "mimic-cxr-2.0.0-split.csv.gz: not a readable gzip file"),
    ("latin-1", "mimic-cxr-2.0.0-metadata.csv.gz: line 3: not UTF-8 text (byte b'\\xe9' at column 15"),
    ("bad label", "mimic-cxr-2.0.0-chexpert.csv.gz: row 2 (line 3), column 'Edema': '2.0' is not a label"),
    ("bad id", "mimic-cxr-2.0.0-metadata.csv.gz: row 1 (line 2), column 'subject_id': 'p10000032' is not a numeric id"),
    ("bad split", "mimic-cxr-2.0.0-split.csv.gz: row 4 (line 5), column 'split': 'val' is not one of"),
    ("short row", "mimic-cxr-2.0.0-split.csv.gz: row 1 (line 2): 3 fields, the header has 4"),
    ("nothing left", "mimic-cxr-2.0.0-metadata.csv.gz: no rows left to write; skipped 3 non-frontal"),
])
def test_mimic_errors_name_the_file_row_and_column(tmp_path, case, fragment):
    root = tmp_path / "mimic"
    label_rows = None
    if case == "bad label":
        label_rows = [["10000032", "50414267"] + [""] * 14,
                      ["10000032", "53189527"] + ["2.0" if c == "Edema" else "" for c in MIMIC_LABEL_COLUMNS[2:]]]
    _mimic(root, label_rows=label_rows)
    meta, split = root / mimic_cxr.MIMIC_METADATA, root / mimic_cxr.MIMIC_SPLIT
    if case == "missing metadata":
        meta.unlink()
    elif case == "no files folder":
        (root / "files").rename(root / "images")
    elif case == "missing column":
        _write_csv(split, ["dicom_id", "study_id", "subject_id"], [["d1", "50414267", "10000032"]], gz=True)
    elif case == "twice a column":
        _write_csv(split, ["dicom_id", "split", "split"], [["d1", "train", "test"]], gz=True)
    elif case == "truncated gzip":
        _gz_bytes_cut(meta)
    elif case == "not gzip":
        split.write_text("dicom_id,study_id,subject_id,split\n")  # gunzipped but still named .gz
    elif case == "latin-1":
        rows = [[d, sub, st, view] for d, sub, st, view, _ in MIMIC_IMAGES]
        rows[1][0] = "d2-radiograph-\u00e9"
        meta.write_bytes(gzip.compress(("dicom_id,subject_id,study_id,ViewPosition\n" + "\n".join(
            ",".join(r) for r in rows) + "\n").encode("latin-1")))
    elif case == "bad id":
        _write_csv(meta, ["dicom_id", "subject_id", "study_id", "ViewPosition"], [["d1", "p10000032", "50414267", "PA"]], gz=True)
    elif case == "bad split":
        _write_csv(split, ["dicom_id", "study_id", "subject_id", "split"],
                   [[d, st, sub, "val" if d == "d4" else s] for d, sub, st, _, s in MIMIC_IMAGES], gz=True)
    elif case == "short row":
        _write_csv(split, ["dicom_id", "study_id", "subject_id", "split"], [["d1", "50414267", "10000032"]], gz=True)
    elif case == "nothing left":
        for jpg in (root / "files").rglob("*.jpg"):
            jpg.unlink()
    out = tmp_path / "out" / "m.csv"
    out.parent.mkdir()
    out.write_text("a manifest from an earlier run\n")
    with pytest.raises(ManifestError) as e:
        mimic_cxr.convert_mimic_cxr(root, out)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    # nothing half-written is left, and the earlier manifest is untouched
    assert list(out.parent.iterdir()) == [out] and out.read_text() == "a manifest from an earlier run\n"


# -----------------------------------------------------------------------------
# CheXpert 5x200

FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + tables.OBSERVATIONS


def _chexpert_rows():
    """(rows, eligible {class: [path]}): per class 4 frontal images positive for it alone, in
    the ways that count as alone, plus images that must never be chosen."""
    rows, eligible, n = [], {c.lower(): [] for c in FIVE}, 0

    def add(cells, view="Frontal"):
        nonlocal n
        n += 1
        path = f"CheXpert-v1.0-small/train/patient{n:05d}/study1/view1_{view.lower()}.jpg"
        rows.append([path, "Female", "60", view, "AP" if view == "Frontal" else ""] +
                    [cells.get(name, "") for name in tables.OBSERVATIONS])
        return path

    for c in FIVE:
        others = [o for o in FIVE if o != c]
        eligible[c.lower()] += [
            add({c: "1.0"}),                                   # the others blank
            add({c: "1.0", **{o: "0.0" for o in others}}),     # the others negative
            add({c: "1.0", "Pneumonia": "1.0", "Support Devices": "-1.0"}),  # only the five count
            add({c: "1.0", others[0]: "0.0"}),
        ]
        add({c: "1.0"}, view="Lateral")                       # lateral: never
        add({c: "1.0", others[1]: "1.0"})                      # two of the five: never
        add({c: "1.0", others[2]: "-1.0"})                     # another uncertain: never
        add({c: "-1.0"})                                       # uncertain alone: never
    add({"No Finding": "1.0"})
    return rows, eligible


def _chexpert(tmp_path, rows):
    csv_path = _write_csv(tmp_path / "CheXpert-v1.0-small" / "train.csv", CHEXPERT_HEADER, rows)
    for row in rows:
        _image(tmp_path / row[0])
    return csv_path


def _chosen(out, root):
    """{(label, image path as CheXpert's Path column gives it)} of a written 5x200 manifest."""
    rows = _read_csv(out)
    assert rows[0] == ["image", "label"]
    return {(label, (out.parent / image).resolve().relative_to(root.resolve()).as_posix()) for image, label in rows[1:]}


def test_chexpert_5x200_takes_exactly_the_single_positive_frontal_images(tmp_path, capsys):
    rows, eligible = _chexpert_rows()
    csv_path = _chexpert(tmp_path, rows)
    out = tmp_path / "eval" / "chexpert_5x200.csv"
    counts = chexpert_5x200.convert_chexpert_5x200(csv_path, out, per_class=4)
    assert counts == {c: 4 for c in eligible}
    assert _chosen(out, tmp_path) == {(c, p) for c, paths in eligible.items() for p in paths}
    assert "atelectasis 4, cardiomegaly 4, consolidation 4, edema 4, pleural effusion 4" in capsys.readouterr().out
    # the prompt file eval.py reads, with the manifest's classes, and the manifest eval.py reads
    prompts = sets.read_prompts(str(out.with_name("chexpert_5x200_prompts.json")))
    assert prompts == chexpert_5x200.PROMPTS_5X200 and list(prompts) == [c.lower() for c in FIVE]
    m = manifest.read_class_manifest(out, 16, list(prompts))
    assert m["images"].shape == (20, 1, 16, 16) and m["labels"].bincount().tolist() == [4] * 5


def test_chexpert_5x200_sampling_is_seeded(tmp_path):
    rows, eligible = _chexpert_rows()
    csv_path = _chexpert(tmp_path, rows)

    def sample(seed, name, path=csv_path):
        chexpert_5x200.convert_chexpert_5x200(path, tmp_path / name, per_class=2, seed=seed)
        return _chosen(tmp_path / name, tmp_path)

    a, again, other = sample(0, "a.csv"), sample(0, "again.csv"), sample(1, "other.csv")
    assert a == again and a != other
    for s in (a, other):
        assert sorted(c for c, _ in s) == sorted([c.lower() for c in FIVE] * 2)  # 2 per class
        assert all(p in eligible[c] for c, p in s)
    # the sample depends on the seed and the paths, not on the order of the CSV's rows
    shuffled = _write_csv(tmp_path / "CheXpert-v1.0-small" / "shuffled.csv", CHEXPERT_HEADER, rows[::-1])
    assert sample(0, "b.csv", shuffled) == a


@pytest.mark.parametrize("case,fragment", [
    ("too few", "train.csv: too few frontal images positive for one class alone for --per-class 5: "
                "['atelectasis', 'cardiomegaly', 'consolidation', 'edema', 'pleural effusion'] (found: atelectasis 4,"),
    ("missing column", "train.csv: line 1 (header), column 'Edema': missing"),
    ("bad value", "train.csv: row 3 (line 4), column 'Cardiomegaly': 'yes' is not a label"),
    ("missing image", "train.csv: row 1 (line 2), column 'Path': image not found: "),
    ("empty path", "train.csv: row 2 (line 3), column 'Path': empty path"),
    ("missing file", "train.csv: file not found"),
])
def test_chexpert_errors_name_the_file_row_and_column(tmp_path, case, fragment):
    rows, _ = _chexpert_rows()
    header = list(CHEXPERT_HEADER)
    if case == "missing column":
        header[header.index("Edema")] = "edema"
    elif case == "bad value":
        rows[2][CHEXPERT_HEADER.index("Cardiomegaly")] = "yes"
    elif case == "empty path":
        rows[1][0] = " "
    csv_path = _chexpert(tmp_path, [r for r in rows if r[0].strip()])
    _write_csv(csv_path, header, rows)
    if case == "missing image":
        (tmp_path / rows[0][0]).unlink()
    elif case == "missing file":
        csv_path.unlink()
    out = tmp_path / "out" / "z.csv"
    with pytest.raises(ManifestError) as e:
        chexpert_5x200.convert_chexpert_5x200(csv_path, out, per_class=5 if case == "too few" else 4)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not out.exists()


def test_cli_chexpert_and_argument_errors(tmp_path, capsys):
    rows, _ = _chexpert_rows()
    csv_path = _chexpert(tmp_path, rows)
    r = subprocess.run([sys.executable, "-m", "tools.convert", "chexpert-5x200", "--csv", str(csv_path),
                        "--per-class", "3", "--out", "z.csv", "--prompts", "p.json"],
                       capture_output=True, text=True, cwd=tmp_path,   # relative paths: from here
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert (len(_read_csv(tmp_path / "z.csv")) == 16
            and json.loads((tmp_path / "p.json").read_text()) == chexpert_5x200.PROMPTS_5X200)
    with pytest.raises(SystemExit) as e:  # 200 asked, 4 there: one line, no traceback
        convert.main(["chexpert-5x200", "--csv", str(csv_path), "--out", str(tmp_path / "y.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "--per-class 200" in err
    with pytest.raises(SystemExit) as e:
        convert.main(["mimic-cxr", "--root", ".", "--splits", "train,val", "--out", "m.csv"])
    assert e.value.code == 2 and "--splits 'train,val'" in capsys.readouterr().err
