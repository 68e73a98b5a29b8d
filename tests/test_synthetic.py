"""Tests for the synthetic data set (synthetic/): each pins a property the rest of the project
relies on (fast: small images)."""

import collections
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from synthetic import radiograph, reports  # noqa: E402
from synthetic import dataset as synthetic  # noqa: E402
from data import PAD_ID  # noqa: E402
from synthetic.dataset import CLASS_PROMPTS, EVAL_SEED, FINDINGS, TRAIN_SEED, ZERO_SHOT_CLASSES  # noqa: E402

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
    said = {s.lower() for i in range(1500) for s in _sentences(synthetic.make_study(TRAIN_SEED, i, 16).report)}
    copies = [p for ps in CLASS_PROMPTS.values() for p in ps if p.lower() in said]
    assert not copies, copies


# -----------------------------------------------------------------------------
# Determinism and disjoint splits


def test_study_is_a_function_of_seed_and_index():
    a, b = synthetic.make_study(TRAIN_SEED, 5, S), synthetic.make_study(TRAIN_SEED, 5, S)
    assert np.array_equal(a.image, b.image) and a.report == b.report and np.array_equal(a.labels, b.labels)
    assert a.image.shape == (S, S) and a.image.dtype == np.float32 and 0 <= a.image.min() and a.image.max() <= 1
    c = synthetic.make_study(TRAIN_SEED, 6, S)
    assert not np.array_equal(a.image, c.image)
    # `only` forces exactly one finding, with a stream of its own
    d = synthetic.make_study(TRAIN_SEED, 5, S, only="edema")
    assert list(d.findings) == ["edema"] and d.labels[FINDINGS.index("edema")] == 1 and d.labels.sum() == 1


def test_workers_do_not_change_the_data():
    one = synthetic.render_synthetic("train", 300, 24, workers=1)  # 300: above the pool threshold
    two = synthetic.render_synthetic("train", 300, 24, workers=2)
    assert torch.equal(one["images"], two["images"]) and one["texts"] == two["texts"]
    assert torch.equal(one["labels"], two["labels"])
    assert one["images"].shape == (300, 1, 24, 24) and one["images"].dtype == torch.uint8
    assert one["labels"].shape == (300, len(FINDINGS)) and one["labels"].dtype == torch.float32


def test_train_and_eval_items_never_coincide():
    train = synthetic.render_synthetic("train", 200, 32, workers=1)
    ret = synthetic.retrieval_set(200, 32, workers=1)
    zs = synthetic.zero_shot_set(20, 32, workers=1)
    key = lambda imgs: {bytes(x.numpy().tobytes()) for x in imgs}  # noqa: E731
    assert not key(train["images"]) & key(ret["images"])
    assert not key(train["images"]) & key(zs["images"])
    assert not key(ret["images"]) & key(zs["images"])
    # the same index in the two seed spaces is a different patient
    assert synthetic.make_study(TRAIN_SEED, 0).patient != synthetic.make_study(EVAL_SEED, 0).patient


def test_second_eval_seed_is_a_disjoint_set_of_the_same_kind():
    key = lambda imgs: {bytes(x.numpy().tobytes()) for x in imgs}  # noqa: E731
    first, second = (synthetic.zero_shot_set(10, 32, workers=1, seed=s)
                     for s in (EVAL_SEED, synthetic.SECOND_EVAL_SEED))
    assert second["labels"].tolist() == first["labels"].tolist()      # the same 5 x n layout
    assert second["classes"] == first["classes"]
    assert not key(first["images"]) & key(second["images"])          # no image shared
    ret1, ret2 = (synthetic.retrieval_set(50, 32, workers=1, seed=s)
                  for s in (EVAL_SEED, synthetic.SECOND_EVAL_SEED))
    assert not key(ret1["images"]) & key(ret2["images"])
    assert not key(ret2["images"]) & key(synthetic.render_synthetic("train", 200, 32, workers=1)["images"])
    assert torch.equal(ret1["images"], synthetic.retrieval_set(50, 32, workers=1)["images"])  # default
    for make in (synthetic.zero_shot_set, synthetic.retrieval_set):
        with pytest.raises(ValueError, match="training set's seed"):
            make(2, 32, workers=1, seed=TRAIN_SEED)


# -----------------------------------------------------------------------------
# The pictures: every finding changes the image where it should. The same patient (anatomy and
# noise) is drawn with and without the finding, so the difference is the finding alone.


def _with_and_without(name, index, **override):
    st = synthetic.make_study(TRAIN_SEED, index, S, only=name)
    f = {**st.findings[name], **override}
    return radiograph.render_image(st.patient, {}, S), radiograph.render_image(st.patient, {name: f}, S), f


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
        st = synthetic.make_study(TRAIN_SEED, i, 8)
        assert st.report.startswith("FINDINGS: ") and " IMPRESSION: " in st.report
        assert _mentioned(st.report) == set(st.findings), (st.findings, st.report)
        assert {FINDINGS[j] for j in np.flatnonzero(st.labels)} == set(st.findings)
        hedged += bool(re.search(r"possible|cannot be excluded|may represent", st.report, re.I))
    assert hedged > 10  # uncertainty is voiced, for weak findings


def test_report_sides_match_the_image_sides():
    for name in ["pleural effusion", "pneumothorax", "consolidation", "atelectasis", "nodule", "support device"]:
        for i in range(40):
            st = synthetic.make_study(TRAIN_SEED, i, 8, only=name)
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
            st = synthetic.make_study(TRAIN_SEED, i, 8, only=name)
            sev = st.findings[name]["severity"]
            other = {"small": "large", "large": "small"}.get(sev)
            positive = " ".join(s for s in _sentences(st.report) if not NEGATIVE.search(s))
            if other:  # a small finding is never called large, nor the reverse
                assert not re.search(words[other], positive, re.I), (sev, st.report)
                said += bool(re.search(words[sev], positive, re.I))
    assert said > 60  # and most reports say how much (some paraphrases leave it out)


def test_normal_studies_are_common_and_share_reports():
    studies = [synthetic.make_study(TRAIN_SEED, i, 8) for i in range(300)]
    normal = [s for s in studies if not s.findings]
    assert 0.25 < len(normal) / len(studies) < 0.45
    text, count = collections.Counter(s.report for s in studies).most_common(1)[0]
    assert count >= 20 and text in reports.CANONICAL_NORMAL  # word-for-word duplicates exist
    assert any(len(s.findings) >= 2 for s in studies)     # and multi-finding studies


def test_eval_sets():
    zs = synthetic.zero_shot_set(6, 32, workers=1)
    assert zs["images"].shape == (30, 1, 32, 32) and zs["images"].dtype == torch.uint8
    assert zs["labels"].dtype == torch.long and zs["labels"].tolist() == [c for c in range(5) for _ in range(6)]
    assert zs["classes"] == ZERO_SHOT_CLASSES and zs["prompts"] == CLASS_PROMPTS
    for text, label in zip(zs["texts"], zs["labels"]):
        assert _mentioned(text) == {ZERO_SHOT_CLASSES[label]}  # single-finding studies
    ret = synthetic.retrieval_set(10, 32, workers=1)
    assert ret["images"].shape == (10, 1, 32, 32) and len(ret["texts"]) == 10 and ret["labels"].shape == (10, len(FINDINGS))


def test_load_or_render_caches(tmp_path):
    a = synthetic.load_or_render("retrieval", 12, 24, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and f"v{synthetic.GENERATOR_VERSION}" in files[0].name
    b = synthetic.load_or_render("retrieval", 12, 24, cache_dir=tmp_path)
    assert torch.equal(a["images"], b["images"]) and a["texts"] == b["texts"]
    z = synthetic.load_or_render("zero_shot", 2, 24, cache_dir=tmp_path)
    assert z["prompts"] == CLASS_PROMPTS and z["labels"].shape == (10,)


# -----------------------------------------------------------------------------
# The rendering pool


def test_render_pool_closes_under_train_py_signal_handler():
    """train.py installs a Ctrl-C / SIGTERM handler that only sets a flag. Pool workers inherit it,
    so without plumbing.runtime.worker_signals they ignore the SIGTERM the pool sends them on closing and
    the final evaluation's rendering hangs forever. Rendering with two workers under that handler must
    finish and give the same images as rendering in this process."""
    code = ("import sys, torch; sys.path.insert(0, '.'); from synthetic import dataset as synthetic; import train\n"
            "train.StopFlag()\n"
            "a = synthetic.zero_shot_set(60, 16, workers=2)\n"      # 300 jobs: above the pool threshold
            "b = synthetic.zero_shot_set(60, 16, workers=1)\n"
            "assert torch.equal(a['images'], b['images']) and a['texts'] == b['texts']\n"
            "print('closed')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the rendering pool did not close: workers ignored its SIGTERM")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("closed")


# -----------------------------------------------------------------------------
# Noisy training reports (train.py --report-noise P)

# The clean generator's output for training items 0..199 (no report noise): the texts, the labels
# and each study's patient and findings (what its picture is drawn from). Exact on any machine (no
# picture's floating point in it); a deliberate change of the generator (a new GENERATOR_VERSION)
# changes it.
CLEAN_200 = "0e979567380817e2c203856a61dd634432d7b09c9190f70b7a5b8bb38b51e716"


def _generator_hash(data, n):
    import hashlib
    h = hashlib.sha256()
    for t in data["texts"]:
        h.update(t.encode() + b"\0")
    h.update(data["labels"].numpy().tobytes())
    for i in range(n):
        s = synthetic.make_study(TRAIN_SEED, i, 8)
        h.update(repr((s.patient, s.findings, s.report)).encode())
    return h.hexdigest()


def _omitted_names(noise, i):
    return {FINDINGS[f] for f in torch.nonzero(noise["omitted"][i]).flatten().tolist()}


def test_report_noise_0_is_the_clean_set_byte_for_byte():
    clean = synthetic.render_synthetic("train", 200, 16, workers=1)
    zero = synthetic.render_synthetic("train", 200, 16, workers=1, report_noise=0.0)
    assert _generator_hash(zero, 200) == CLEAN_200
    assert zero.keys() == clean.keys() == {"images", "texts", "labels"}   # no "noise" entry at 0
    assert torch.equal(zero["images"], clean["images"]) and zero["texts"] == clean["texts"]
    assert torch.equal(zero["labels"], clean["labels"])
    # the pictures are make_study's, drawn from the patients and findings the hash pins
    for i in (0, 57, 199):
        assert torch.equal(zero["images"][i, 0], torch.from_numpy(synthetic.to_uint8(synthetic.make_study(TRAIN_SEED, i, 16).image)))
    # the pictureless path gives the same reports and labels
    reports = synthetic.training_reports(200)
    assert reports["texts"] == clean["texts"] and torch.equal(reports["labels"], clean["labels"])
    assert "noise" not in reports


def test_report_noise_rates_on_20000_pairs():
    """Left out: P of the findings the images show; swapped: P/2 of the pairs; each within 3
    standard errors. The texts agree with the flags: a pair that keeps its own report mentions
    exactly the findings shown and not left out."""
    P, n = 0.3, 20000
    d = synthetic.training_reports(n, P)
    noise, labels = d["noise"], d["labels"]
    assert noise["p"] == P and noise["omitted"].shape == labels.shape and noise["swapped_from"].shape == (n,)
    assert not (noise["omitted"] & (labels == 0)).any()           # only shown findings are left out
    shown = int(labels.sum())
    omission = int(noise["omitted"].sum()) / shown
    swap = float((noise["swapped_from"] >= 0).float().mean())
    se_omission, se_swap = (P * (1 - P) / shown) ** 0.5, (P / 2 * (1 - P / 2) / n) ** 0.5
    print(f"\nreport noise {P}: left out {omission:.4f} of {shown} shown findings (expected {P}, "
          f"se {se_omission:.4f}); swapped {swap:.4f} of {n} pairs (expected {P / 2}, se {se_swap:.4f})")
    assert abs(omission - P) < 3 * se_omission, omission
    assert abs(swap - P / 2) < 3 * se_swap, swap
    own = torch.nonzero(noise["swapped_from"] < 0).flatten().tolist()
    for i in own[:1500]:
        shown_i = {FINDINGS[f] for f in np.flatnonzero(labels[i].numpy())}
        assert _mentioned(d["texts"][i]) == shown_i - _omitted_names(noise, i), (i, d["texts"][i])
    # under-reporting turns abnormal images into normal reports
    emptied = [i for i in own if labels[i].sum() > 0 and noise["omitted"][i].sum() == labels[i].sum()]
    assert len(emptied) > 100 and all(not _mentioned(d["texts"][i]) for i in emptied[:200])


def test_a_mismatched_report_belongs_to_the_named_other_study():
    n, P = 300, 0.4
    noisy = synthetic.render_synthetic("train", n, 16, workers=1, report_noise=P)
    clean = synthetic.render_synthetic("train", n, 16, workers=1)
    noise = noisy["noise"]
    # only the reports change: the pictures and the labels (the true findings) are the clean set's
    assert torch.equal(noisy["images"], clean["images"]) and torch.equal(noisy["labels"], clean["labels"])
    swapped = torch.nonzero(noise["swapped_from"] >= 0).flatten().tolist()
    assert len(swapped) > 30
    checked_clean = 0
    for i in swapped:
        j = int(noise["swapped_from"][i])
        assert j != i and 0 <= j < n
        # study j's report as written for it (its own findings left out, never its own swap)
        assert noisy["texts"][i] == synthetic.written_report(TRAIN_SEED, j, _omitted_names(noise, j))
        if not noise["omitted"][j].any():   # then that is study j's report, as make_study renders it
            assert noisy["texts"][i] == synthetic.make_study(TRAIN_SEED, j, 16).report
            checked_clean += 1
    assert checked_clean > 20
    for i in range(n):
        if noise["swapped_from"][i] < 0 and not noise["omitted"][i].any():
            assert noisy["texts"][i] == clean["texts"][i]
    assert synthetic.changed_reports(noise).sum() == sum(
        bool(noise["omitted"][i].any()) or i in swapped for i in range(n))
    # rendering and the pictureless path agree
    reports = synthetic.training_reports(n, P)
    assert reports["texts"] == noisy["texts"]
    assert torch.equal(reports["noise"]["omitted"], noise["omitted"])
    assert torch.equal(reports["noise"]["swapped_from"], noise["swapped_from"])


def test_report_noise_is_pure_and_monotone_in_p():
    a, b = synthetic.training_reports(1500, 0.3), synthetic.training_reports(1500, 0.3)
    assert a["texts"] == b["texts"]
    assert torch.equal(a["noise"]["omitted"], b["noise"]["omitted"])
    assert torch.equal(a["noise"]["swapped_from"], b["noise"]["swapped_from"])
    low = synthetic.training_reports(1500, 0.1)["noise"]
    high = a["noise"]
    assert low["omitted"].sum() < high["omitted"].sum()
    assert not (low["omitted"] & ~high["omitted"]).any()           # left out at 0.1: also at 0.3
    was = low["swapped_from"] >= 0
    assert was.sum() < (high["swapped_from"] >= 0).sum()
    assert torch.equal(high["swapped_from"][was], low["swapped_from"][was])  # the same partner
    # P = 1: every finding left out, so every report is a normal study's; half the pairs swapped
    every = synthetic.training_reports(300, 1.0)
    assert torch.equal(every["noise"]["omitted"], every["labels"] > 0)
    assert all(not _mentioned(t) for t in every["texts"])
    assert 100 < (every["noise"]["swapped_from"] >= 0).sum() < 200


def test_evaluation_sets_never_get_report_noise(tmp_path):
    for split in ("retrieval", "zero_shot"):
        with pytest.raises(ValueError, match="training set only"):
            synthetic.load_or_render(split, 4, 16, report_noise=0.3)
    with pytest.raises(ValueError, match="training set only"):
        synthetic.render_synthetic("retrieval", 4, 16, report_noise=0.3)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            synthetic.render_synthetic("train", 4, 16, report_noise=bad)


def test_the_cache_key_holds_the_report_noise(tmp_path):
    v = synthetic.GENERATOR_VERSION
    assert synthetic.cache_file_name("train", 12, 16) == f"train-n12-s16-v{v}.pt"   # no noise in the name
    assert synthetic.cache_file_name("train", 12, 16, 0.0) == f"train-n12-s16-v{v}.pt"
    names = {synthetic.cache_file_name("train", 12, 16, p) for p in (0.0, 0.1, 0.3, 0.30000000000000004)}
    assert len(names) == 4
    sets = {p: synthetic.load_or_render("train", 12, 16, cache_dir=tmp_path, workers=1, report_noise=p)
            for p in (0.0, 0.5)}
    assert sorted(f.name for f in tmp_path.glob("*.pt")) == sorted(
        synthetic.cache_file_name("train", 12, 16, p) for p in (0.0, 0.5))
    again = synthetic.load_or_render("train", 12, 16, cache_dir=tmp_path, report_noise=0.5)  # from the file
    assert again["texts"] == sets[0.5]["texts"] != sets[0.0]["texts"]
    assert torch.equal(again["noise"]["swapped_from"], sets[0.5]["noise"]["swapped_from"])
    assert "noise" not in synthetic.load_or_render("train", 12, 16, cache_dir=tmp_path)
