"""Tests for the MS-CXR converter (tools/ms_cxr.py, python -m tools.convert ms-cxr), on a tiny fake of
its box CSV and of the MIMIC-CXR-JPG images it points to."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import convert, ms_cxr  # noqa: E402
from manifests import grounding as gm  # noqa: E402
from manifests.read import ManifestError  # noqa: E402
from test_convert import _image, _read_csv, _write_csv  # noqa: E402  (the fakes' writers)

# MS-CXR: its CSV's layout (v1.1.0; v1.0.0 is the same without split), one row per box, path
# relative to the MIMIC-CXR-JPG folder. The fake's images are small and keep the CSV's sizes,
# except one, stored at half the size the CSV gives (a resized copy of MIMIC-CXR-JPG).

MS_CXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                 "image_width", "image_height", "split"]
MS_A = "675d792f-a3521e48-5eec8573-1e81d644-e60c34f8"
MS_B = "4decce85-c6ede74e-7a8bc81c-e81edee9-5ec17116"
MS_C = "5318d353-daae9c3d-2ee8648e-32b65198-aeff801e"
MS_D = "08c206fa-15bc2f42-f8918f67-9efbc2a4-3a1a8c0e"
MS_PATHS = {MS_A: f"files/p10/p10233088/s54276838/{MS_A}.jpg", MS_B: f"files/p10/p10500801/s58577720/{MS_B}.jpg",
            MS_C: f"files/p10/p10123147/s50230934/{MS_C}.jpg", MS_D: f"files/p11/p11000011/s51000001/{MS_D}.jpg"}
MS_ROWS = [
    [MS_A, "Pneumonia", "Bibasilar opacities", MS_PATHS[MS_A], "6", "36", "18", "12", "60", "72", "train"],
    [MS_A, "Pneumonia", "Bibasilar opacities", MS_PATHS[MS_A], "34", "36", "20", "14", "60", "72", "train"],
    [MS_B, "Pneumothorax", "Large right-sided pneumothorax", MS_PATHS[MS_B], "5", "3", "30", "50", "72", "60", "test"],
    [MS_C, "Cardiomegaly", "Moderate cardiomegaly", MS_PATHS[MS_C], "40", "60", "50", "37", "120", "144", "val"],
    [MS_D, "Pleural Effusion", "Small left pleural effusion", MS_PATHS[MS_D], "30", "40", "20", "20", "60", "72", "test"],
]
MS_FILE_SIZES = {MS_A: (60, 72), MS_B: (72, 60), MS_C: (60, 72)}  # MS_D's image is not there


def _ms_cxr(tmp_path, rows=MS_ROWS, header=MS_CXR_HEADER):
    root = tmp_path / "mimic-cxr-jpg"
    for dicom, size in MS_FILE_SIZES.items():
        _image(root / MS_PATHS[dicom], size=size)
    return _write_csv(tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv", header, rows), root


def _ms_img(dicom):
    return os.path.join("..", "mimic-cxr-jpg", *MS_PATHS[dicom].split("/"))


@pytest.mark.parametrize("version", ["v1.1.0", "v1.0.0"])
def test_ms_cxr_manifest_rows(tmp_path, capsys, version):
    header, rows = MS_CXR_HEADER, MS_ROWS
    if version == "v1.0.0":  # no split column
        header, rows = header[:-1], [r[:-1] for r in rows]
    csv_path, root = _ms_cxr(tmp_path, rows, header)
    out = tmp_path / "out" / "ms_cxr.csv"
    count = ms_cxr.convert_ms_cxr(csv_path, root, out)
    split = (lambda s: [s]) if version == "v1.1.0" else (lambda s: [])
    assert _read_csv(out) == [
        ["image", "text", "x", "y", "w", "h", "label"] + split("split"),
        [_ms_img(MS_A), "Bibasilar opacities", "6", "36", "18", "12", "pneumonia"] + split("train"),
        [_ms_img(MS_A), "Bibasilar opacities", "34", "36", "20", "14", "pneumonia"] + split("train"),
        [_ms_img(MS_B), "Large right-sided pneumothorax", "5", "3", "30", "50", "pneumothorax"] + split("test"),
        # the file is half the CSV's 120 x 144: the box is halved with it
        [_ms_img(MS_C), "Moderate cardiomegaly", "20", "30", "25", "18.5", "cardiomegaly"] + split("val"),
    ]
    assert (count["written"], count["image not found"], count["rescaled"]) == (4, 1, 1)
    said = capsys.readouterr().out
    assert "wrote 4 boxes on 3 images" in said and "(cardiomegaly 1, pneumonia 2, pneumothorax 1)" in said
    assert "skipped 1 boxes whose image is not under" in said
    # the output is a grounding manifest: three phrases (the two opacities are one, two boxes)
    m = gm.read_grounding_manifest(out, 12, log=lambda *a: None)
    assert m["texts"] == ["Bibasilar opacities", "Large right-sided pneumothorax", "Moderate cardiomegaly"]
    assert m["labels"] == ["pneumonia", "pneumothorax", "cardiomegaly"] and m["dropped"] == 0
    both = gm.box_to_mask(6, 36, 18, 12, 60, 72, 12) | gm.box_to_mask(34, 36, 20, 14, 60, 72, 12)
    assert torch.equal(m["masks"][0], both)


def test_ms_cxr_cli_with_splits(tmp_path, capsys):
    csv_path, root = _ms_cxr(tmp_path)
    out = tmp_path / "test.csv"
    convert.main(["ms-cxr", "--csv", str(csv_path), "--images", str(root), "--splits", "test,val", "--out", str(out)])
    assert [r[1] for r in _read_csv(out)[1:]] == ["Large right-sided pneumothorax", "Moderate cardiomegaly"]
    assert "2 boxes of other splits" in capsys.readouterr().out
    # v1.0.0 has no split to choose by: one line, no traceback
    _write_csv(csv_path, MS_CXR_HEADER[:-1], [r[:-1] for r in MS_ROWS])
    with pytest.raises(SystemExit) as e:
        convert.main(["ms-cxr", "--csv", str(csv_path), "--images", str(root), "--splits", "test", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "column 'split': missing" in err


def _ms_bad(case):
    rows, header = [list(r) for r in MS_ROWS], list(MS_CXR_HEADER)
    col = {name: i for i, name in enumerate(MS_CXR_HEADER)}
    if case == "negative w":
        rows[1][col["w"]] = "-20"
    elif case == "outside width":
        rows[2][col["x"]] = "50"                       # 50 + 30 > 72
    elif case == "outside height":
        rows[0][col["h"]] = "40"                       # 36 + 40 > 72
    elif case == "negative x":
        rows[2][col["x"]] = "-5"
    elif case == "not a number":
        rows[3][col["y"]] = "6O"
    elif case == "missing column":
        header[col["image_height"]] = "image_heigth"
    elif case == "empty text":
        rows[2][col["label_text"]] = " "
    elif case == "other picture":
        rows[3][col["image_width"]] = "100"          # the file is 60 x 72: not 100 x 144 at any one scale
    return rows, header


@pytest.mark.parametrize("case,fragment", [
    ("negative w", "row 2 (line 3), column 'w': -20 is not a positive size"),
    ("outside width", "row 3 (line 4), columns 'x' and 'w': the box ends at x + w = 80, past image_width 72"),
    ("outside height", "row 1 (line 2), columns 'y' and 'h': the box ends at y + h = 76, past image_height 72"),
    ("negative x", "row 3 (line 4), column 'x': -5 is outside the image"),
    ("not a number", "row 4 (line 5), column 'y': '6O' is not a number"),
    ("missing column", "line 1 (header), column 'image_height': missing"),
    ("empty text", "row 3 (line 4), column 'label_text': empty"),
    ("other picture", "row 4 (line 5), column 'image_width': the image "),
])
def test_ms_cxr_errors_name_the_file_row_and_column(tmp_path, case, fragment):
    rows, header = _ms_bad(case)
    csv_path, root = _ms_cxr(tmp_path, rows, header)
    out = tmp_path / "out" / "ms_cxr.csv"
    with pytest.raises(ManifestError) as e:
        ms_cxr.convert_ms_cxr(csv_path, root, out)
    msg = str(e.value)
    assert msg.startswith(str(csv_path)) and fragment in msg and "\n" not in msg, msg
    assert not out.exists() and not list(out.parent.glob("*.tmp"))
