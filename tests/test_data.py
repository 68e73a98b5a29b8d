"""Tests for data.py: each pins a property the rest of the project relies on (fast: small images)."""

import collections
import csv
import os
import re
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
from data import (CLASS_PROMPTS, EVAL_SEED, FINDINGS, PAD_ID, TRAIN_SEED, ZERO_SHOT_CLASSES,  # noqa: E402
                  ManifestError)

S = 64  # image size for the tests

# -----------------------------------------------------------------------------
# The vocabulary others depend on


def test_api_names_and_order():
    assert FINDINGS[:8] == ["cardiomegaly", "pleural effusion", "pneumothorax", "consolidation",
                            "atelectasis", "edema", "nodule", "support device"]
    assert ZERO_SHOT_CLASSES == ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion"]
    assert set(CLASS_PROMPTS) == set(ZERO_SHOT_CLASSES)
    assert all(len(set(p)) >= 3 for p in CLASS_PROMPTS.values())
    assert PAD_ID == 0 and TRAIN_SEED != EVAL_SEED


def _sentences(report):
    body = re.sub(r"\b(FINDINGS|IMPRESSION):", " ", report)
    return [s.strip() for s in re.split(r"(?<=[.])\s+", body) if s.strip()]


def test_prompts_are_not_copies_of_report_sentences():
    # zero-shot must test the concept, not a memorised template
    said = {s.lower() for i in range(1500) for s in _sentences(data.make_study(TRAIN_SEED, i, 16).report)}
    copies = [p for ps in CLASS_PROMPTS.values() for p in ps if p.lower() in said]
    assert not copies, copies


# -----------------------------------------------------------------------------
# Determinism and disjoint splits


def test_study_is_a_function_of_seed_and_index():
    a, b = data.make_study(TRAIN_SEED, 5, S), data.make_study(TRAIN_SEED, 5, S)
    assert np.array_equal(a.image, b.image) and a.report == b.report and np.array_equal(a.labels, b.labels)
    assert a.image.shape == (S, S) and a.image.dtype == np.float32 and 0 <= a.image.min() and a.image.max() <= 1
    c = data.make_study(TRAIN_SEED, 6, S)
    assert not np.array_equal(a.image, c.image)
    # `only` forces exactly one finding, with a stream of its own
    d = data.make_study(TRAIN_SEED, 5, S, only="edema")
    assert list(d.findings) == ["edema"] and d.labels[FINDINGS.index("edema")] == 1 and d.labels.sum() == 1


def test_workers_do_not_change_the_data():
    one = data.render_synthetic("train", 300, 24, workers=1)  # 300: above the pool threshold
    two = data.render_synthetic("train", 300, 24, workers=2)
    assert torch.equal(one["images"], two["images"]) and one["texts"] == two["texts"]
    assert torch.equal(one["labels"], two["labels"])
    assert one["images"].shape == (300, 1, 24, 24) and one["images"].dtype == torch.uint8
    assert one["labels"].shape == (300, len(FINDINGS)) and one["labels"].dtype == torch.float32


def test_train_and_eval_items_never_coincide():
    train = data.render_synthetic("train", 200, 32, workers=1)
    ret = data.retrieval_set(200, 32, workers=1)
    zs = data.zero_shot_set(20, 32, workers=1)
    key = lambda imgs: {bytes(x.numpy().tobytes()) for x in imgs}  # noqa: E731
    assert not key(train["images"]) & key(ret["images"])
    assert not key(train["images"]) & key(zs["images"])
    assert not key(ret["images"]) & key(zs["images"])
    # the same index in the two seed spaces is a different patient
    assert data.make_study(TRAIN_SEED, 0).patient != data.make_study(EVAL_SEED, 0).patient


# -----------------------------------------------------------------------------
# The pictures: every finding changes the image where it should. The same patient (anatomy and
# noise) is drawn with and without the finding, so the difference is the finding alone.


def _with_and_without(name, index, **override):
    st = data.make_study(TRAIN_SEED, index, S, only=name)
    f = {**st.findings[name], **override}
    return data.render_image(st.patient, {}, S), data.render_image(st.patient, {name: f}, S), f


def _halves(diff):
    """Summed |change| on the image's left half and right half."""
    a = np.abs(diff)
    return a[:, :S // 2].sum(), a[:, S // 2:].sum()


@pytest.mark.parametrize("name", ["pleural effusion", "pneumothorax", "consolidation", "atelectasis", "nodule"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_lateral_findings_change_the_stated_side(name, side):
    # Radiological convention: the patient's right is on the image's left.
    for i in range(6):
        base, img, _ = _with_and_without(name, i, side=side)
        image_left, image_right = _halves(img - base)
        stated, other = (image_left, image_right) if side == "right" else (image_right, image_left)
        assert stated > 0.5 and stated > 5 * other, (i, stated, other)


def test_bilateral_findings_change_both_sides():
    for name in ["pleural effusion", "consolidation", "atelectasis", "edema"]:
        base, img, _ = _with_and_without(name, 0, side="bilateral")
        left, right = _halves(img - base)
        assert 0.33 < left / right < 3, (name, left, right)


def test_cardiomegaly_widens_the_heart_towards_the_patients_left():
    for i in range(6):
        base, img, _ = _with_and_without("cardiomegaly", i)
        d = img - base
        # the heart replaces dark lung: the lower middle of the chest gets brighter ...
        assert d[S // 2:int(0.8 * S), S // 4:3 * S // 4].mean() > 0.03
        # ... mostly on the image's right, the patient's left, where the heart lies
        left, right = _halves(d)
        assert right > 1.3 * left


def test_effusion_fills_the_base_not_the_apex():
    base, img, _ = _with_and_without("pleural effusion", 1, side="right", severity="moderate")
    d = (img - base)[:, :S // 2]
    assert d[S // 2:].mean() > 0.05      # fluid: brighter lower zone
    assert np.abs(d[:S // 4]).mean() < 0.005  # apex untouched


def test_pneumothorax_darkens_the_lung():
    base, img, _ = _with_and_without("pneumothorax", 2, side="left", severity="moderate")
    d = (img - base)[:, S // 2:]
    assert (d < -0.05).sum() > 30  # air without lung markings: darker pixels
    assert (d > 0.05).sum() > 5    # and the bright visceral pleural line


def test_small_findings_are_local_and_devices_are_bright_lines():
    base, img, _ = _with_and_without("nodule", 0, severity="moderate")
    changed = np.abs(img - base) > 0.05
    assert 2 <= changed.sum() < 0.03 * S * S
    for i in range(4):
        base, img, f = _with_and_without("support device", i)
        changed = (img - base) > 0.1
        assert changed.sum() > 10 and changed.sum() < 0.15 * S * S, f["device"]


@pytest.mark.parametrize("name", ["cardiomegaly", "pleural effusion", "pneumothorax", "consolidation",
                                  "atelectasis", "edema", "nodule"])
def test_severity_scales_the_change(name):
    amount = []
    for severity in ["small", "moderate", "large"]:
        extra = {"size_mm": {"small": 6, "moderate": 15, "large": 45}[severity]} if name == "nodule" else {}
        base, img, _ = _with_and_without(name, 3, severity=severity, jitter=1.0, **extra)
        amount.append(np.abs(img - base).sum())
    assert amount[0] < amount[1] < amount[2], amount


# -----------------------------------------------------------------------------
# The reports agree with the findings

KEYWORDS = {  # how a report can say each finding (synonyms included)
    "cardiomegaly": r"cardiomegaly|enlarged|enlargement",
    "pleural effusion": r"effusion|pleural space",
    "pneumothorax": r"pneumothora",
    "consolidation": r"consolidat|airspace|pneumonia",
    "atelectasis": r"atelecta",
    "edema": r"edema|congestion",
    "nodule": r"nodul|mass",
    "support device": r"tube|catheter|pacemaker|device",
}
NEGATIVE = re.compile(r"\b(no|normal|clear|unremarkable|without)\b", re.I)


def _mentioned(report):
    """Findings named by the report's positive (not negated) sentences."""
    positive = " ".join(s for s in _sentences(report) if not NEGATIVE.search(s)).lower()
    return {name for name, pattern in KEYWORDS.items() if re.search(pattern, positive)}


def test_reports_mention_exactly_the_present_findings():
    hedged = 0
    for i in range(400):
        st = data.make_study(TRAIN_SEED, i, 8)
        assert st.report.startswith("FINDINGS: ") and " IMPRESSION: " in st.report
        assert _mentioned(st.report) == set(st.findings), (st.findings, st.report)
        assert {FINDINGS[j] for j in np.flatnonzero(st.labels)} == set(st.findings)
        hedged += bool(re.search(r"possible|cannot be excluded|may represent", st.report, re.I))
    assert hedged > 10  # uncertainty is voiced, for weak findings


def test_report_sides_match_the_image_sides():
    for name in ["pleural effusion", "pneumothorax", "consolidation", "atelectasis", "nodule", "support device"]:
        for i in range(40):
            st = data.make_study(TRAIN_SEED, i, 8, only=name)
            side, text = st.findings[name]["side"], st.report.lower()
            if side in ("right", "left"):
                other = "left" if side == "right" else "right"
                assert re.search(rf"\b{side}\b", text) and not re.search(rf"\b{other}\b", text), text
            elif side == "bilateral":
                assert re.search(r"bilateral|both|bibasilar", text) and not re.search(r"\b(left|right)\b", text), text


def test_severity_words_match():
    words = {"small": r"\b(small|trace|mild|mildly|minimal|subsegmental|patchy|focal|tiny|borderline)\b",
             "large": r"\b(large|marked|markedly|severe|severely|extensive|dense)\b"}
    said = 0
    for name in ["pleural effusion", "cardiomegaly", "edema", "atelectasis", "pneumothorax", "consolidation"]:
        for i in range(30):
            st = data.make_study(TRAIN_SEED, i, 8, only=name)
            sev = st.findings[name]["severity"]
            other = {"small": "large", "large": "small"}.get(sev)
            positive = " ".join(s for s in _sentences(st.report) if not NEGATIVE.search(s))
            if other:  # a small finding is never called large, nor the reverse
                assert not re.search(words[other], positive, re.I), (sev, st.report)
                said += bool(re.search(words[sev], positive, re.I))
    assert said > 60  # and most reports say how much (some paraphrases leave it out)


def test_normal_studies_are_common_and_share_reports():
    studies = [data.make_study(TRAIN_SEED, i, 8) for i in range(300)]
    normal = [s for s in studies if not s.findings]
    assert 0.25 < len(normal) / len(studies) < 0.45
    text, count = collections.Counter(s.report for s in studies).most_common(1)[0]
    assert count >= 20 and text in data.CANONICAL_NORMAL  # word-for-word duplicates exist
    assert any(len(s.findings) >= 2 for s in studies)     # and multi-finding studies


def test_eval_sets():
    zs = data.zero_shot_set(6, 32, workers=1)
    assert zs["images"].shape == (30, 1, 32, 32) and zs["images"].dtype == torch.uint8
    assert zs["labels"].dtype == torch.long and zs["labels"].tolist() == [c for c in range(5) for _ in range(6)]
    assert zs["classes"] == ZERO_SHOT_CLASSES and zs["prompts"] == CLASS_PROMPTS
    for text, label in zip(zs["texts"], zs["labels"]):
        assert _mentioned(text) == {ZERO_SHOT_CLASSES[label]}  # single-finding studies
    ret = data.retrieval_set(10, 32, workers=1)
    assert ret["images"].shape == (10, 1, 32, 32) and len(ret["texts"]) == 10 and ret["labels"].shape == (10, len(FINDINGS))


def test_load_or_render_caches(tmp_path):
    a = data.load_or_render("retrieval", 12, 24, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and f"v{data.GENERATOR_VERSION}" in files[0].name
    b = data.load_or_render("retrieval", 12, 24, cache_dir=tmp_path)
    assert torch.equal(a["images"], b["images"]) and a["texts"] == b["texts"]
    z = data.load_or_render("zero_shot", 2, 24, cache_dir=tmp_path)
    assert z["prompts"] == CLASS_PROMPTS and z["labels"].shape == (10,)


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
    texts = [data.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
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
    texts = [data.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
    again = data.train_tokenizer(list(reversed(texts)), vocab_size=512)  # order must not matter either
    assert again.get_vocab() == tokenizer.get_vocab()  # same data -> same vocabulary -> same model
    unk = tokenizer.token_to_id("[UNK]")
    ids, _ = data.tokenize(tokenizer, ["Pneumomediastinum."], 16)
    assert unk not in ids.tolist()[0]  # an unseen word is spelled in pieces, not lost


def test_tokenizer_save_and_load_round_trip(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = data.load_tokenizer(path)
    texts = [data.make_study(EVAL_SEED, i, 8).report for i in range(20)]
    assert torch.equal(data.tokenize(tokenizer, texts, 64)[0], data.tokenize(loaded, texts, 64)[0])
    with pytest.raises(FileNotFoundError):
        data.load_tokenizer(tmp_path / "missing.json")


# -----------------------------------------------------------------------------
# Manifests


def test_manifest_round_trip(tmp_path):
    csv_path = data.export_synthetic(tmp_path / "export", 8, image_size=S)
    loaded = data.read_pair_manifest(csv_path, S)
    rendered = data.render_synthetic("train", 8, S, workers=1)
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


def test_convert_iu_xray_on_a_fake(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
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
        _png(images / name)
    out = tmp_path / "out" / "manifest.csv"
    n = data.convert_iu_xray(tmp_path / "indiana_reports.csv", tmp_path / "indiana_projections.csv", images, out)
    assert n == 3
    assert "skipped 1 reports with empty findings and impression" in capsys.readouterr().out
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["FINDINGS: The lungs are clear. IMPRESSION: Normal chest.",
                                        "IMPRESSION: Cardiomegaly.", "FINDINGS: Small left effusion."]
    assert [Path(r["image"]).name for r in rows] == ["1_IM-0001-4001.dcm.png", "2_IM-0652-1001.dcm.png",
                                                     "4_IM-2000-1001.dcm.png"]
    m = data.read_pair_manifest(out, 16)  # the converter's output is a valid manifest
    assert m["images"].shape == (3, 1, 16, 16)


# -----------------------------------------------------------------------------
# Command line


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_show_and_export(tmp_path):
    r = _cli("show", "--out", "grid.png", "--n", "5", "--image-size", "64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = data.show_tile_size(64)
    assert Image.open(tmp_path / "grid.png").size == (3 * w, 2 * h)  # 5 studies: 3 columns, 2 rows
    r = _cli("export", "--out", "exp", "--n", "4", "--image-size", "32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "exp" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all((tmp_path / "exp" / row["image"]).is_file() for row in rows)
    assert Image.open(tmp_path / "exp" / rows[0]["image"]).size == (32, 32)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        data.main(["iu-xray", "--reports", str(tmp_path / "nope.csv"), "--projections", "p.csv",
                   "--images", ".", "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "nope.csv" in err and len(err.strip().splitlines()) == 1


def test_render_pool_closes_under_train_py_signal_handler():
    """train.py installs a Ctrl-C / SIGTERM handler that only sets a flag. Pool workers inherit it,
    so without data._worker_signals they ignore the SIGTERM the pool sends them on closing and the
    final evaluation's rendering hangs forever. Rendering with two workers under that handler must
    finish and give the same images as rendering in this process."""
    code = ("import sys, torch; sys.path.insert(0, '.'); import data, train\n"
            "train.StopFlag()\n"
            "a = data.zero_shot_set(60, 16, workers=2)\n"      # 300 jobs: above the pool threshold
            "b = data.zero_shot_set(60, 16, workers=1)\n"
            "assert torch.equal(a['images'], b['images']) and a['texts'] == b['texts']\n"
            "print('closed')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the rendering pool did not close: workers ignored its SIGTERM")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("closed")
