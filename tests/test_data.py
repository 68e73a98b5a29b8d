"""Tests for data.py: each pins a property the rest of the project relies on (fast: small images)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import synthetic  # noqa: E402
from data import PAD_ID, ManifestError  # noqa: E402
from synthetic import EVAL_SEED, TRAIN_SEED  # noqa: E402

S = 64  # image size for the tests


# -----------------------------------------------------------------------------
# Augmentation


def test_train_augment_keeps_shape_range_and_sides():
    x = torch.zeros(16, 1, S, S)
    x[:, :, 24:40, 6:18] = 1.0  # a bright marker on the image's left
    torch.manual_seed(0)
    y = data.train_augment(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    # the marker's centre of mass stays near column 12 (a flip would put it near column 52)
    bright = (y - y.flatten(1).median(1).values[:, None, None, None]).clamp(min=0)[:, 0]  # (B, H, W)
    column = (bright.sum(1) * torch.arange(S)).sum(1) / bright.sum((1, 2))
    assert (column < 20).all(), column
    assert not torch.equal(y[0], y[1])  # each sample gets its own transform


def test_train_augment_randomness_is_torch_only():
    x = torch.rand(4, 1, 32, 32)
    torch.manual_seed(1)
    np.random.seed(0)
    a = data.train_augment(x)
    torch.manual_seed(1)
    np.random.seed(123)  # other generators must not matter: resume restores torch's state only
    import random
    random.seed(5)
    b = data.train_augment(x)
    assert torch.equal(a, b)


# -----------------------------------------------------------------------------
# Duplicate-aware report ids


def test_report_ids_equal_iff_normalised_text_equal():
    ids = data.report_ids(["No acute process.", "  no ACUTE   process ", "No acute process!", "No acute processes."])
    assert ids.dtype == torch.int64 and (ids >= 0).all()
    assert ids[0] == ids[1] == ids[2] and ids[0] != ids[3]


def test_report_ids_are_the_same_in_every_process():
    # pinned values: Python's salted hash() would change them from one process to the next
    texts = ["FINDINGS: The lungs are clear.", "Small left pleural effusion."]
    assert data.report_ids(texts).tolist() == [5754151493906059403, 4693294839202170079]


# -----------------------------------------------------------------------------
# Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = [synthetic.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
    return data.train_tokenizer(texts, vocab_size=512)


def test_tokenize_pads_truncates_and_keeps_a_token(tokenizer):
    texts = ["", "Small left pleural effusion.", " ".join(["edema"] * 100)]
    ids, mask = data.tokenize(tokenizer, texts, 16)
    assert ids.shape == (3, 16) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.equal(mask, ids != PAD_ID)
    assert (mask.sum(1) >= 1).all()            # even the empty text: [CLS] [SEP]
    assert mask[0].sum() == 2 and not mask[1].all()  # short texts are padded with PAD_ID
    assert mask[2].all()                       # long texts are truncated to the context ...
    sep = tokenizer.token_to_id("[SEP]")
    assert ids[2, -1] == sep and ids[0, 0] == tokenizer.token_to_id("[CLS]")  # ... and keep [SEP]
    assert tokenizer.token_to_id("[PAD]") == PAD_ID
    # lower-casing normaliser: case does not change the ids
    assert torch.equal(data.tokenize(tokenizer, ["CARDIOMEGALY"], 8)[0], data.tokenize(tokenizer, ["cardiomegaly"], 8)[0])


def test_tokenizer_is_deterministic_and_spells_unseen_words(tokenizer):
    texts = [synthetic.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
    again = data.train_tokenizer(list(reversed(texts)), vocab_size=512)  # order must not matter either
    assert again.get_vocab() == tokenizer.get_vocab()  # same data -> same vocabulary -> same model
    unk = tokenizer.token_to_id("[UNK]")
    ids, _ = data.tokenize(tokenizer, ["Pneumomediastinum."], 16)
    assert unk not in ids.tolist()[0]  # an unseen word is spelled in pieces, not lost


def test_tokenizer_save_and_load_round_trip(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = data.load_tokenizer(path)
    texts = [synthetic.make_study(EVAL_SEED, i, 8).report for i in range(20)]
    assert torch.equal(data.tokenize(tokenizer, texts, 64)[0], data.tokenize(loaded, texts, 64)[0])
    with pytest.raises(FileNotFoundError):
        data.load_tokenizer(tmp_path / "missing.json")


# -----------------------------------------------------------------------------
# Manifests


def test_manifest_round_trip(tmp_path):
    csv_path = synthetic.export_synthetic(tmp_path / "export", 8, image_size=S)
    loaded = data.read_pair_manifest(csv_path, S)
    rendered = synthetic.render_synthetic("train", 8, S, workers=1)
    assert torch.equal(loaded["images"], rendered["images"])
    assert loaded["texts"] == rendered["texts"] and torch.equal(loaded["labels"], rendered["labels"])
    assert loaded["splits"] == ["train"] * 8
    rgb = data.read_pair_manifest(csv_path, 32, channels=3)  # resized, 3 channels
    assert rgb["images"].shape == (8, 3, 32, 32) and rgb["images"].dtype == torch.uint8


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _png(path, value=128, mode="L", size=(40, 30)):
    Image.new(mode, size, value).save(path)
    return path.name


@pytest.mark.parametrize("case,column", [
    ("missing column", "text"), ("missing image", "image"), ("unreadable image", "image"),
    ("empty text", "text"), ("unknown label", "labels")])
def test_manifest_errors_name_file_row_and_column(tmp_path, case, column):
    good = _png(tmp_path / "good.png")
    rows = [[good, "Small left pleural effusion.", "pleural effusion"], [good, "Clear lungs.", ""]]
    header = ["image", "text", "labels"]
    if case == "missing column":
        header, rows = ["image", "labels"], [[r[0], r[2]] for r in rows]
    elif case == "missing image":
        rows[1][0] = "nowhere.png"
    elif case == "unreadable image":
        (tmp_path / "garbage.png").write_bytes(b"this is not a png")
        rows[1][0] = "garbage.png"
    elif case == "empty text":
        rows[1][1] = "   "
    elif case == "unknown label":
        rows[1][2] = "pleural effusion;dragon"
    path = _write_csv(tmp_path / "pairs.csv", header, rows)
    with pytest.raises(ManifestError) as e:
        data.read_pair_manifest(path, 32)
    msg = str(e.value)
    assert "pairs.csv" in msg and f"'{column}'" in msg
    assert ("line 1" in msg) if case == "missing column" else ("row 2" in msg), msg


def test_pair_manifest_reads_rgb_16bit_and_absolute_paths(tmp_path):
    rgb = _png(tmp_path / "rgb.png", (200, 10, 10), "RGB")
    a = np.linspace(0, 4000, 40 * 30, dtype=np.uint16).reshape(30, 40)  # a 16-bit radiograph
    Image.fromarray(a).save(tmp_path / "deep.png")
    jpg = tmp_path / "sub" / "x.jpg"
    jpg.parent.mkdir()
    Image.new("L", (50, 50), 90).save(jpg)
    path = _write_csv(tmp_path / "m.csv", ["image", "text", "split"],
                      [[rgb, "a", "train"], ["deep.png", "b", "val"], [str(jpg), "c", "val"]])
    m = data.read_pair_manifest(path, 16)
    assert m["images"].shape == (3, 1, 16, 16) and m["labels"] is None and m["splits"] == ["train", "val", "val"]
    deep = m["images"][1, 0].float()
    assert deep.max() >= 250 and deep.min() <= 5  # rescaled by its range, not clipped at 255


def test_class_manifest(tmp_path):
    img = _png(tmp_path / "a.png")
    classes = ["atelectasis", "edema"]
    ok = data.read_class_manifest(_write_csv(tmp_path / "ok.csv", ["image", "label"], [[img, "edema"], [img, "Atelectasis"]]), 16, classes)
    assert ok["labels"].tolist() == [1, 0] and ok["images"].shape == (2, 1, 16, 16) and ok["classes"] == classes
    bad = _write_csv(tmp_path / "bad.csv", ["image", "label"], [[img, "edema"], [img, "edema"], [img, "pneumonia"]])
    with pytest.raises(ManifestError, match=r"bad\.csv.*row 3.*'label'.*pneumonia"):
        data.read_class_manifest(bad, 16, classes)


# -----------------------------------------------------------------------------
# Command line


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_show_and_export(tmp_path):
    r = _cli("show", "--out", "grid.png", "--n", "5", "--image-size", "64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = synthetic.show_tile_size(64)
    assert Image.open(tmp_path / "grid.png").size == (3 * w, 2 * h)  # 5 studies: 3 columns, 2 rows
    r = _cli("export", "--out", "exp", "--n", "4", "--image-size", "32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "exp" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all((tmp_path / "exp" / row["image"]).is_file() for row in rows)
    assert Image.open(tmp_path / "exp" / rows[0]["image"]).size == (32, 32)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the export folder should go")
    with pytest.raises(SystemExit) as e:
        data.main(["export", "--out", str(tmp_path / "taken"), "--n", "2", "--image-size", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "taken" in err and len(err.strip().splitlines()) == 1
