"""The grounding manifest (grounding.py): boxes to masks as load_image crops and resizes the image,
the manifest read row by row with one clear line per bad row, and a manifest grounded end to end
by eval.py and train.py."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from data import train_tokenizer
from manifests import grounding as gm
from manifests.read import ManifestError, load_image
from model import DualEncoder, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# Boxes to masks, matched to manifest.load_image


def test_a_box_converts_to_exactly_its_pixels():
    mask = gm.box_to_mask(20, 30, 40, 10, 100, 100, 10)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[3, 2:6] = True                                           # rows 3..3, columns 2..5
    assert torch.equal(mask, want)
    # a wide image is centre-cropped: 200 x 100 keeps columns 50..149; (60, 0, 20, 100) -> cols 1..2
    mask = gm.box_to_mask(60, 0, 20, 100, 200, 100, 10)
    assert mask.sum() == 20 and mask[:, 1:3].all()
    # a box in the cropped-off margin is empty; a box smaller than a pixel keeps the pixel under it
    assert not gm.box_to_mask(0, 0, 40, 100, 200, 100, 10).any()
    tiny_box = gm.box_to_mask(21, 31, 2, 2, 100, 100, 10)
    assert tiny_box.sum() == 1 and tiny_box[3, 2]


@pytest.mark.parametrize("size,box", [((100, 100), (20, 30, 40, 10)), ((200, 100), (60, 10, 40, 60)),
                                      ((90, 150), (18, 48, 36, 27))])
def test_box_masks_match_what_load_image_makes_of_the_box(tmp_path, size, box):
    # draw the box white on black, load it as evaluation does, and compare: for a box whose edges
    # fall on the evaluation grid, the resized image is above mid-grey exactly on the mask
    x, y, w, h = box
    a = np.zeros(size[::-1], np.uint8)
    a[y:y + h, x:x + w] = 255
    Image.fromarray(a, "L").save(tmp_path / "box.png")
    loaded = torch.from_numpy(load_image(tmp_path / "box.png", 10)[0] >= 128)
    assert torch.equal(gm.box_to_mask(x, y, w, h, *size, 10), loaded)


# -----------------------------------------------------------------------------
# The grounding manifest


def _manifest(path, rows, header=("image", "text", "x", "y", "w", "h", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _images(tmp_path):
    Image.new("L", (100, 100), 40).save(tmp_path / "a.png")
    Image.new("L", (200, 100), 40).save(tmp_path / "b.png")


def test_read_grounding_manifest(tmp_path):
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [
        ["a.png", "Right lower lobe opacity.", "20", "30", "40", "10", "Consolidation"],
        ["a.png", "Bilateral effusions.", "0", "80", "30", "20", "Pleural Effusion"],
        ["a.png", "Bilateral effusions.", "70", "80", "30", "20", "Pleural Effusion"],  # same phrase: one region
        ["b.png", "Left apical pneumothorax.", "60.0", "0", "20", "100", ""],
        ["b.png", "Cut off by the crop.", "0", "0", "40", "100", "x"],                 # dropped, counted
    ])
    said = []
    m = gm.read_grounding_manifest(csv_path, 10, log=said.append)
    assert m["images"].shape == (2, 1, 10, 10) and m["images"].dtype == torch.uint8
    assert m["texts"] == ["Right lower lobe opacity.", "Bilateral effusions.", "Left apical pneumothorax."]
    assert m["labels"] == ["consolidation", "pleural effusion", None]
    assert m["image_index"].tolist() == [0, 0, 1] and m["dropped"] == 1 and "dropped 1 of 4 phrases" in said[0]
    assert torch.equal(m["masks"][0], gm.box_to_mask(20, 30, 40, 10, 100, 100, 10))
    both = gm.box_to_mask(0, 80, 30, 20, 100, 100, 10) | gm.box_to_mask(70, 80, 30, 20, 100, 100, 10)
    assert torch.equal(m["masks"][1], both) and m["masks"][1].sum() == 12
    assert torch.equal(m["masks"][2], gm.box_to_mask(60, 0, 20, 100, 200, 100, 10))


@pytest.mark.parametrize("row,fragment", [
    (["a.png", "Opacity.", "2O", "30", "40", "10", ""], "row 2 (line 3), column 'x': '2O' is not a number"),
    (["a.png", "Opacity.", "20", "30", "-40", "10", ""], "row 2 (line 3), column 'w': the box's width is -40; it must be positive"),
    (["a.png", "Opacity.", "20", "30", "40", "0", ""], "row 2 (line 3), column 'h': the box's height is 0; it must be positive"),
    (["a.png", "Opacity.", "-1", "30", "40", "10", ""], "row 2 (line 3), column 'x': -1 is left of the image"),
    (["a.png", "Opacity.", "70", "30", "40", "10", ""], "row 2 (line 3), columns 'x' and 'w': the box ends at x + w = 110, "
                                                         "past the image's width of 100 px"),
    (["b.png", "Opacity.", "20", "50", "40", "60", ""], "row 2 (line 3), columns 'y' and 'h': the box ends at y + h = 110, "
                                                         "past the image's height of 100 px"),
    (["c.png", "Opacity.", "20", "30", "40", "10", ""], "row 2 (line 3), column 'image': file not found: "),
    (["a.png", " ", "20", "30", "40", "10", ""], "row 2 (line 3), column 'text': empty phrase"),
    (["", "Opacity.", "20", "30", "40", "10", ""], "row 2 (line 3), column 'image': empty path"),
])
def test_each_bad_row_is_one_clear_line(tmp_path, row, fragment):
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [["a.png", "Fine.", "0", "0", "10", "10", ""], row])
    with pytest.raises(ManifestError) as e:
        gm.read_grounding_manifest(csv_path, 10)
    msg = str(e.value)
    assert msg.startswith(f"{csv_path}: ") and fragment in msg and "\n" not in msg, msg


def test_missing_column_and_every_problem_listed(tmp_path):
    _images(tmp_path)
    with pytest.raises(ManifestError, match=r"g\.csv: line 1 \(header\), column 'h': missing"):
        gm.read_grounding_manifest(_manifest(tmp_path / "g.csv", [["a.png", "t", "0", "0", "1"]],
                                                    header=("image", "text", "x", "y", "w")), 10)
    rows = [["a.png", "t", "x", "0", "1", "1"], ["a.png", "t", "0", "0", "1", "1"], ["a.png", "t", "0", "0", "1", "-1"]]
    with pytest.raises(ManifestError) as e:
        gm.read_grounding_manifest(_manifest(tmp_path / "g.csv", rows, header=gm.GROUNDING_COLUMNS), 10)
    lines = str(e.value).splitlines()
    assert "row 1 (line 2), column 'x'" in lines[0] and lines[1] == "(1 more problems:)" and "row 3 (line 4), column 'h'" in lines[2]


def test_an_unreadable_image_is_one_clear_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    csv_path = _manifest(tmp_path / "g.csv", [["a.png", "Opacity.", "0", "0", "1", "1", ""]])
    with pytest.raises(ManifestError, match=r"row 1 \(line 2\), column 'image': cannot read image .*a\.png"):
        gm.read_grounding_manifest(csv_path, 10)


# -----------------------------------------------------------------------------
# A grounding manifest end to end (eval.py, train.py)


def test_eval_cli_grounds_a_manifest_and_draws_it(tmp_path):
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [
        ["a.png", "Right lower lobe opacity.", "20", "30", "40", "10", "consolidation"],
        ["b.png", "Left effusion.", "120", "60", "30", "20", "pleural effusion"],
        ["b.png", "Left effusion.", "100", "10", "10", "10", "pleural effusion"]])
    tokenizer = train_tokenizer(["Right lower lobe opacity.", "Left effusion."], 100)
    cfg = ModelConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                      vocab_size=tokenizer.get_vocab_size(), context_length=16, text_width=32,
                      text_layers=1, text_heads=2, embed_dim=24)
    torch.save({"student": DualEncoder(cfg).state_dict(), "step": 1,
                "config": {"model": asdict(cfg), "train": {}}}, tmp_path / "ckpt.pt")
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), "--checkpoint", str(tmp_path),
                           "--grounding-manifest", str(csv_path), "--json", str(tmp_path / "r.json"),
                           "--show-grounding", str(tmp_path / "g.png")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    # the user's data replaces the synthetic benchmark: grounding alone, on their phrases
    assert set(res) == {"grounding", "evaluated_on"}
    assert res["evaluated_on"] == {"grounding": {"source": str(csv_path), "phrases": 2}}
    assert {k: v["n"] for k, v in res["grounding"]["per_class"].items()} == {
        "consolidation": 1, "pleural effusion": 1}
    # a manifest has no prior and no place-free sentences; the contrast map is the pair's difference
    assert set(res["grounding"]) == {"per_class", "overall", "class_mean", "no_place", "random_grid", "contrast",
                                      "grid_ceiling"}
    assert "model: contrast map" in proc.stdout and "text-only prior" not in proc.stdout
    picture = Image.open(tmp_path / "g.png")
    assert picture.size == (3 * 128, 2 * (128 + 4 * 13 + 6))     # a row per class, 3 cells each


def test_train_grounds_a_manifest_in_its_final_report(tmp_path):
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [
        ["a.png", "Right lower lobe opacity.", "20", "30", "40", "10", "consolidation"]])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--out", str(out),
                           "--image-size", "32", "--n-train", "64", "--batch-size", "8",
                           "--steps", "1", "--vocab-size", "200", "--data-cache", "",
                           "--workers", "1", "--grounding-manifest", str(csv_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "grounding, mean of 1 classes" in proc.stdout and "random 4x4" in proc.stdout
    res = json.loads((out / "eval.json").read_text())
    assert set(res) == {"grounding", "evaluated_on"}
    assert res["grounding"]["per_class"]["consolidation"]["n"] == 1
    assert "contrast" not in res["grounding"]      # one phrase: nothing to contrast it with
