"""Grounding: the synthetic masks (radiograph.py), the patch embeddings (model.py), the similarity
map, the metrics against hand computations, and the grounding manifest (grounding.py)."""

import csv
import os
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import grounding
from synthetic import radiograph
from synthetic import dataset as synthetic
from manifests.read import ManifestError, load_image
from model import DualEncoder, ModelConfig
from synthetic.dataset import FINDINGS, TRAIN_SEED

S = 64
LOCALISED = ["cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "atelectasis",
             "nodule", "support device"]


# -----------------------------------------------------------------------------
# Masks of the synthetic findings


def test_render_with_masks_keeps_the_image_byte_for_byte():
    for i in range(6):
        s = synthetic.make_study(TRAIN_SEED, i, S)  # a training-like mix of 0-3 findings
        image, masks = radiograph.render_with_masks(s.patient, s.findings, S)
        assert image.dtype == np.float32 and image.tobytes() == s.image.tobytes()
        assert set(masks) == set(s.findings)


@pytest.mark.parametrize("name", LOCALISED)
def test_a_mask_is_where_the_finding_changed_the_picture(name):
    thr = radiograph.MASK_THRESHOLD
    for i in range(12):
        s = synthetic.make_study(TRAIN_SEED, i, S, only=name)
        mask = radiograph.finding_masks(s.patient, s.findings, S)[name]
        assert mask.shape == (S, S) and mask.dtype == bool
        diff = np.abs(s.image - radiograph.render_image(s.patient, {}, S))
        assert diff[~mask].max(initial=0) <= thr       # outside: equal within the threshold
        assert diff[mask].min() > thr and mask.any()   # inside: every pixel changed by more
        # a place, not half the chest: measured at 64 px, from 0.1% (a small nodule) to 30% (a
        # large bilateral consolidation; one hemithorax is about 15%): docs/grounding.md
        assert 0 < mask.mean() < 0.35, (i, mask.mean())


def test_masks_with_several_findings_leave_the_others_in_the_picture():
    # with other findings present, a mask is what this finding adds to the picture as it is
    seen = set()
    for i in range(60):
        s = synthetic.make_study(TRAIN_SEED, i, S)
        if len(s.findings) < 2:
            continue
        masks = radiograph.finding_masks(s.patient, s.findings, S)
        for name, mask in masks.items():
            if mask is None:
                continue
            without = radiograph.render_image(s.patient, {k: v for k, v in s.findings.items() if k != name}, S)
            diff = np.abs(s.image - without)
            assert diff[~mask].max(initial=0) <= radiograph.MASK_THRESHOLD and diff[mask].min() > radiograph.MASK_THRESHOLD
            seen.add(name)
    assert len(seen) >= 4


def test_edema_has_no_place():
    assert radiograph.NO_PLACE == {"edema"} and set(LOCALISED) | radiograph.NO_PLACE == set(FINDINGS)
    s = synthetic.make_study(TRAIN_SEED, 0, S, only="edema")
    assert radiograph.finding_masks(s.patient, s.findings, S) == {"edema": None}
    # why: what it changes spreads over both lungs
    changed = np.abs(s.image - radiograph.render_image(s.patient, {}, S)) > radiograph.MASK_THRESHOLD
    assert changed.mean() > 0.2


# -----------------------------------------------------------------------------
# Patch embeddings


def tiny(**kw):
    base = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                vocab_size=50, context_length=16, text_width=32, text_layers=1, text_heads=2, embed_dim=24)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("pool,stem", [("max", "conv"), ("max", "patch"), ("cls", "conv")])
def test_patch_states_are_the_states_the_pooling_sees(pool, stem):
    torch.manual_seed(0)
    model = DualEncoder(tiny(pool=pool, stem=stem)).double().eval()
    images = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    states = model.patch_states(images)
    assert states.shape == (3, 16, 32)
    captured = {}
    model.visual.blocks[-1].register_forward_hook(lambda m, i, out: captured.update(x=out))
    pooled = model.visual(images)  # the tower's own forward
    last = captured["x"][:, 1:] if pool == "cls" else captured["x"]
    torch.testing.assert_close(states, model.visual.ln_final(last), rtol=0, atol=1e-12)
    if pool == "max":
        torch.testing.assert_close(states.amax(1), pooled, rtol=0, atol=1e-12)


def test_projecting_the_max_of_the_patch_states_is_encode_image():
    # pins that encode_patches uses the pooled vector's projection (and its LayerNorm)
    torch.manual_seed(0)
    model = DualEncoder(tiny()).eval()
    images = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        via_patches = torch.nn.functional.normalize(model.image_proj(model.patch_states(images).amax(1)), dim=-1)
        patches = model.encode_patches(images)
        torch.testing.assert_close(via_patches, model.encode_image(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(patches.norm(dim=-1), torch.ones(4, 16))
        # same projection: patch p's embedding is image_proj of patch p's state, normalised
        torch.testing.assert_close(patches, torch.nn.functional.normalize(
            model.patch_states(images) @ model.image_proj.weight.T, dim=-1), rtol=1e-5, atol=1e-6)


# -----------------------------------------------------------------------------
# The map follows the model


def aligned_model(hot=(1, 2)):
    """A model built by hand whose patch `hot` (row, column), and only it, has the embedding of the
    'text' e0: a single 8 x 8 patch convolution whose output channel 0 is the patch's mean
    brightness and channel 1 a constant, no positions, the transformer block an identity (its
    residual branches zeroed), identity projection. The image is dark except at the hot patch."""
    cfg = tiny(stem="patch", vision_layers=1, vision_width=8, vision_heads=2, embed_dim=8)
    model = DualEncoder(cfg).eval()
    with torch.no_grad():
        for p in model.visual.parameters():
            p.zero_()
        for ln in (model.visual.ln_final, model.visual.blocks[0].ln1, model.visual.blocks[0].ln2):
            ln.weight.fill_(1.0)
        conv = model.visual.patch_embed
        conv.weight[0] = 1.0 / 64       # channel 0: the patch's mean brightness
        conv.bias[1] = 1.0              # channel 1: a constant, so a dark patch is not the zero vector
        model.image_proj.weight.copy_(torch.eye(8))
    image = torch.zeros(1, 1, 32, 32)
    r, c = hot
    image[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 1.0
    # the hot patch's state: LayerNorm of (1, 1, 0, ...); a dark one: LayerNorm of (0, 1, 0, ...)
    text = model.encode_patches(image)[0, r * 4 + c]
    return model, image, text


@pytest.mark.parametrize("hot", [(1, 2), (0, 0), (3, 1)])
def test_the_map_peaks_at_the_patch_aligned_with_the_text(hot):
    model, image, text = aligned_model(hot)
    with torch.no_grad():
        sim = grounding.similarity_map(model, image, text)
        grid = model.encode_patches(image)[0] @ text
    assert sim.shape == (1, 32, 32) and -1 - 1e-6 <= sim.min() and sim.max() <= 1 + 1e-6
    assert grid.argmax() == hot[0] * 4 + hot[1] and grid.max() == pytest.approx(1.0)
    assert grid.sort().values[-2] < 0.9  # only that patch aligns
    # after upsampling, every maximum lies in that patch's 8 x 8 pixels
    r, c = hot
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = True
    assert grounding.pointing_game(sim[0], inside) == 1.0
    # uint8 images are read as /255, a (B, D) text batch works like one shared text
    again = grounding.similarity_map(model, (image * 255).to(torch.uint8), text[None])
    torch.testing.assert_close(again, sim.detach())


def test_the_map_is_the_bilinear_upsampling_of_the_patch_grid():
    torch.manual_seed(0)
    model = DualEncoder(tiny()).eval()
    images, text = torch.rand(2, 1, 32, 32), torch.nn.functional.normalize(torch.randn(2, 24), dim=-1)
    with torch.no_grad():
        sim = grounding.similarity_map(model, images, text * 3)  # any scale: normalised inside
        grid = torch.einsum("bpd,bd->bp", model.encode_patches(images), text).view(2, 1, 4, 4)
    want = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(sim, want)


# -----------------------------------------------------------------------------
# Metrics against hand computations

# a 4 x 4 map 0..15 (row-major) and its bottom-right 2 x 2 region {10, 11, 14, 15}
MAP = torch.arange(16, dtype=torch.float32).view(4, 4)
MASK = torch.zeros(4, 4, dtype=torch.bool)
MASK[2:, 2:] = True


def test_pointing_game_by_hand():
    assert grounding.pointing_game(MAP, MASK) == 1.0             # 15 is inside
    assert grounding.pointing_game(-MAP, MASK) == 0.0            # 0, at (0, 0), is outside
    flat = torch.full((4, 4), 0.3)
    assert grounding.pointing_game(flat, MASK) == 0.0            # ties: every maximum must be inside
    assert grounding.pointing_game(flat, torch.ones(4, 4, dtype=torch.bool)) == 1.0
    two = torch.zeros(4, 4)
    two[3, 3] = two[0, 0] = 1.0                                  # one maximum in, one out: a miss
    assert grounding.pointing_game(two, MASK) == 0.0
    two[0, 0], two[2, 2] = 0.0, 1.0                              # both in: a hit
    assert grounding.pointing_game(two, MASK) == 1.0


def test_cnr_by_hand():
    inside = [10, 11, 14, 15]
    outside = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
    mu_in, mu_out = sum(inside) / 4, sum(outside) / 12                       # 12.5, 70/12
    var_in = sum((v - mu_in) ** 2 for v in inside) / 4                       # 4.25 (population)
    var_out = sum((v - mu_out) ** 2 for v in outside) / 12                   # 15.8055...
    want = abs(mu_in - mu_out) / math.sqrt(var_in + var_out)                 # 1.48865...
    assert var_in == 4.25 and want == pytest.approx(1.488646, abs=1e-6)
    assert grounding.cnr(MAP, MASK) == pytest.approx(want, rel=1e-12)
    assert grounding.cnr(-MAP, MASK) == pytest.approx(want, rel=1e-12)      # |.|: the sign does not matter
    assert grounding.cnr(3 * MAP + 7, MASK) == pytest.approx(want, rel=1e-9)  # nor the scale or offset


def test_cnr_of_a_constant_map_and_of_the_mask_itself():
    assert grounding.cnr(torch.full((4, 4), 0.42), MASK) == 0.0  # no contrast: 0/0 is 0
    assert grounding.cnr(MASK.float(), MASK) == math.inf         # no noise: |1 - 0| / 0, no epsilon


def test_miou_by_hand():
    # normalised map v / 15; at t = 0.5 the map selects v >= 7.5: {8..15}, 8 pixels, 4 of them in
    # the mask (the union is the 8): IoU 4/8; at t = 0.25, v >= 3.75: {4..15}: 4/12; at t = 0.75,
    # v >= 11.25: {12..15}: {14, 15} shared, union {10..15}: 2/6
    assert grounding.miou(MAP, MASK, thresholds=(0.5,)) == pytest.approx(4 / 8)
    assert grounding.miou(MAP, MASK, thresholds=(0.25, 0.5, 0.75)) == pytest.approx((4 / 12 + 4 / 8 + 2 / 6) / 3)
    # the default thresholds 0.1..0.9: v >= 1.5, 3, 4.5, 6, 7.5, 9, 10.5, 12, 13.5
    by_hand = [4 / 14, 4 / 13, 4 / 11, 4 / 10, 4 / 8, 4 / 7, 3 / 6, 2 / 6, 2 / 4]
    assert grounding.THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert grounding.miou(MAP.double(), MASK) == pytest.approx(sum(by_hand) / 9)
    assert grounding.miou(MASK.float(), MASK) == 1.0              # the map is the mask
    assert grounding.miou(torch.full((4, 4), 0.42), MASK) == 0.0  # a constant map selects nothing


def test_metrics_refuse_what_they_cannot_score():
    empty, full = torch.zeros(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool)
    for fn in (grounding.pointing_game, grounding.cnr, grounding.miou):
        with pytest.raises(ValueError, match="needs some inside"):
            fn(MAP, empty)
        with pytest.raises(ValueError, match="the same"):
            fn(MAP, MASK[:3])
    with pytest.raises(ValueError, match="and some outside"):
        grounding.cnr(MAP, full)
    with pytest.raises(ValueError, match="NaN"):  # a NaN map would otherwise "hit": NaN == max is False
        grounding.pointing_game(torch.full((4, 4), math.nan), MASK)


def test_summarize_per_class_and_overall():
    other = torch.zeros(4, 4, dtype=torch.bool)
    other[0, :2] = True                                           # {0, 1}: the map's minimum
    items = [("effusion", MAP, MASK), ("effusion", MAP, other), ("nodule", MAP, MASK), ("edema", MAP, None)]
    out = grounding.summarize(items)
    cnr_a, cnr_b = grounding.cnr(MAP, MASK), grounding.cnr(MAP, other)
    assert out["per_class"]["effusion"]["n"] == 2
    assert out["per_class"]["effusion"]["pointing_game"] == 0.5
    assert out["per_class"]["effusion"]["cnr"] == pytest.approx((cnr_a + cnr_b) / 2)
    assert out["per_class"]["nodule"] == {"n": 1, "pointing_game": 1.0, "cnr": cnr_a, "miou": grounding.miou(MAP, MASK)}
    assert out["overall"]["n"] == 3 and out["overall"]["pointing_game"] == pytest.approx(2 / 3)
    assert out["overall"]["cnr"] == pytest.approx((2 * cnr_a + cnr_b) / 3)
    assert out["class_mean"]["pointing_game"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["no_place"] == {"edema": 1}


def test_synthetic_masks_score_a_map_equal_to_them_perfectly():
    s = synthetic.make_study(TRAIN_SEED, 3, S, only="consolidation")
    mask = torch.from_numpy(radiograph.finding_masks(s.patient, s.findings, S)["consolidation"])
    out = grounding.summarize([("consolidation", mask.float(), mask)])["overall"]
    assert (out["pointing_game"], out["miou"], out["cnr"]) == (1.0, 1.0, math.inf)


# -----------------------------------------------------------------------------
# Boxes to masks, matched to manifest.load_image


def test_a_box_converts_to_exactly_its_pixels():
    mask = grounding.box_to_mask(20, 30, 40, 10, 100, 100, 10)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[3, 2:6] = True                                           # rows 3..3, columns 2..5
    assert torch.equal(mask, want)
    # a wide image is centre-cropped: 200 x 100 keeps columns 50..149; (60, 0, 20, 100) -> cols 1..2
    mask = grounding.box_to_mask(60, 0, 20, 100, 200, 100, 10)
    assert mask.sum() == 20 and mask[:, 1:3].all()
    # a box in the cropped-off margin is empty; a box smaller than a pixel keeps the pixel under it
    assert not grounding.box_to_mask(0, 0, 40, 100, 200, 100, 10).any()
    tiny_box = grounding.box_to_mask(21, 31, 2, 2, 100, 100, 10)
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
    assert torch.equal(grounding.box_to_mask(x, y, w, h, *size, 10), loaded)


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
    m = grounding.read_grounding_manifest(csv_path, 10, log=said.append)
    assert m["images"].shape == (2, 1, 10, 10) and m["images"].dtype == torch.uint8
    assert m["texts"] == ["Right lower lobe opacity.", "Bilateral effusions.", "Left apical pneumothorax."]
    assert m["labels"] == ["consolidation", "pleural effusion", None]
    assert m["image_index"].tolist() == [0, 0, 1] and m["dropped"] == 1 and "dropped 1 of 4 phrases" in said[0]
    assert torch.equal(m["masks"][0], grounding.box_to_mask(20, 30, 40, 10, 100, 100, 10))
    both = grounding.box_to_mask(0, 80, 30, 20, 100, 100, 10) | grounding.box_to_mask(70, 80, 30, 20, 100, 100, 10)
    assert torch.equal(m["masks"][1], both) and m["masks"][1].sum() == 12
    assert torch.equal(m["masks"][2], grounding.box_to_mask(60, 0, 20, 100, 200, 100, 10))


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
        grounding.read_grounding_manifest(csv_path, 10)
    msg = str(e.value)
    assert msg.startswith(f"{csv_path}: ") and fragment in msg and "\n" not in msg, msg


def test_missing_column_and_every_problem_listed(tmp_path):
    _images(tmp_path)
    with pytest.raises(ManifestError, match=r"g\.csv: line 1 \(header\), column 'h': missing"):
        grounding.read_grounding_manifest(_manifest(tmp_path / "g.csv", [["a.png", "t", "0", "0", "1"]],
                                                    header=("image", "text", "x", "y", "w")), 10)
    rows = [["a.png", "t", "x", "0", "1", "1"], ["a.png", "t", "0", "0", "1", "1"], ["a.png", "t", "0", "0", "1", "-1"]]
    with pytest.raises(ManifestError) as e:
        grounding.read_grounding_manifest(_manifest(tmp_path / "g.csv", rows, header=grounding.GROUNDING_COLUMNS), 10)
    lines = str(e.value).splitlines()
    assert "row 1 (line 2), column 'x'" in lines[0] and lines[1] == "(1 more problems:)" and "row 3 (line 4), column 'h'" in lines[2]


def test_an_unreadable_image_is_one_clear_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    csv_path = _manifest(tmp_path / "g.csv", [["a.png", "Opacity.", "0", "0", "1", "1", ""]])
    with pytest.raises(ManifestError, match=r"row 1 \(line 2\), column 'image': cannot read image .*a\.png"):
        grounding.read_grounding_manifest(csv_path, 10)


# -----------------------------------------------------------------------------
# The synthetic grounding set, and grounding in the benchmark (eval.py, train.py)

NAMED = {"atelectasis": ("atelecta", "collapse", "volume loss"), "consolidation": ("consolidation", "opacity"),
         "nodule": ("nodul", "mass"), "pleural effusion": ("effusion", "fluid"),
         "pneumothorax": ("pneumothorax",)}


def test_the_grounding_set_is_single_findings_with_their_mask_and_sentence():
    g = synthetic.grounding_set(6, 32)
    assert g["images"].shape == (30, 1, 32, 32) and g["masks"].shape == (30, 32, 32)
    assert g["labels"] == [c for c in synthetic.GROUNDING_CLASSES for _ in range(6)]
    for i, (name, text) in enumerate(zip(g["labels"], g["texts"])):
        rng, patient, findings = synthetic.draw_study(synthetic.GROUNDING_SEED, i % 6, only=name)
        assert list(findings) == [name]
        report = synthetic.write_report(findings, rng)
        assert report.startswith("FINDINGS: " + text[:-1])      # its first sentence, which
        assert any(word in text.lower() for word in NAMED[name]), text   # names the finding
        image, masks = radiograph.render_with_masks(patient, findings, 32)
        assert torch.equal(g["masks"][i], torch.from_numpy(masks[name])) and g["masks"][i].any()
    # seeded apart from the training and both evaluation sets
    import eval as evaluation
    seeds = {evaluation.grounding_seed(s) for s in (synthetic.EVAL_SEED, synthetic.SECOND_EVAL_SEED)}
    assert len(seeds) == 2 and not seeds & {TRAIN_SEED, synthetic.EVAL_SEED, synthetic.SECOND_EVAL_SEED}


def test_evaluate_reports_grounding_per_class_with_its_chance_level():
    import eval as evaluation
    from data import train_tokenizer
    g = synthetic.grounding_set(4, 32)
    tokenizer = train_tokenizer(g["texts"], 200)
    model = DualEncoder(tiny(vocab_size=tokenizer.get_vocab_size())).eval()
    gr = {**g, "source": "synthetic"}
    res = evaluation.evaluate(model, tokenizer, "cpu", 32, zs=False, ret=False, gr=gr)
    out = res["grounding"]
    assert res["evaluated_on"]["grounding"] == {"source": "synthetic", "phrases": 20,
                                                "seed": synthetic.GROUNDING_SEED}
    maps = evaluation.grounding_maps(model, tokenizer, g["images"], g["texts"], "cpu")
    for name in synthetic.GROUNDING_CLASSES:
        rows = [i for i, label in enumerate(g["labels"]) if label == name]
        c = out["per_class"][name]
        assert c["n"] == 4
        assert c["pointing_game"] == pytest.approx(
            sum(grounding.pointing_game(maps[i], g["masks"][i]) for i in rows) / 4)
        assert c["cnr"] == pytest.approx(sum(grounding.cnr(maps[i], g["masks"][i]) for i in rows) / 4)
        # a random map's maximum lands in the mask with the mask's share of the image
        assert c["chance_pointing_game"] == pytest.approx(
            sum(g["masks"][i].float().mean().item() for i in rows) / 4)
    assert "grounding   pointing game of a random map" in evaluation.format_table(res)


def test_eval_cli_grounds_a_manifest_and_draws_it(tmp_path):
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    from data import train_tokenizer
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [
        ["a.png", "Right lower lobe opacity.", "20", "30", "40", "10", "consolidation"],
        ["b.png", "Left effusion.", "120", "60", "30", "20", "pleural effusion"],
        ["b.png", "Left effusion.", "100", "10", "10", "10", "pleural effusion"]])
    tokenizer = train_tokenizer(["Right lower lobe opacity.", "Left effusion."], 100)
    cfg = tiny(vocab_size=tokenizer.get_vocab_size())
    torch.save({"student": DualEncoder(cfg).state_dict(), "step": 1,
                "config": {"model": asdict(cfg), "train": {}}}, tmp_path / "ckpt.pt")
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    proc = subprocess.run([sys.executable, os.path.join(root, "eval.py"), "--checkpoint", str(tmp_path),
                           "--grounding-manifest", str(csv_path), "--json", str(tmp_path / "r.json"),
                           "--show-grounding", str(tmp_path / "g.png")],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    # the user's data replaces the synthetic benchmark: grounding alone, on their phrases
    assert set(res) == {"grounding", "evaluated_on"}
    assert res["evaluated_on"] == {"grounding": {"source": str(csv_path), "phrases": 2}}
    assert {k: v["n"] for k, v in res["grounding"]["per_class"].items()} == {
        "consolidation": 1, "pleural effusion": 1}
    picture = Image.open(tmp_path / "g.png")
    assert picture.size == (3 * 128, 2 * (128 + 4 * 13 + 6))     # a row per class, 3 cells each


def test_train_grounds_a_manifest_in_its_final_report(tmp_path):
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _images(tmp_path)
    csv_path = _manifest(tmp_path / "g.csv", [
        ["a.png", "Right lower lobe opacity.", "20", "30", "40", "10", "consolidation"]])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(root, "train.py"), "--out", str(out),
                           "--image-size", "32", "--n-train", "64", "--batch-size", "8",
                           "--steps", "1", "--vocab-size", "200", "--data-cache", "",
                           "--workers", "1", "--grounding-manifest", str(csv_path)],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "grounding   pointing game, mean of 1 classes" in proc.stdout
    res = json.loads((out / "eval.json").read_text())
    assert set(res) == {"grounding", "evaluated_on"}
    assert res["grounding"]["per_class"]["consolidation"]["n"] == 1
