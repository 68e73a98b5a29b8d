"""Grounding: the synthetic masks (radiograph.py), the patch embeddings (model.py), the similarity
map and the metrics against hand computations (grounding.py), the synthetic grounding set and its
scores in evaluate() (eval.py). The grounding manifest: test_grounding_manifest.py."""

import math

import numpy as np
import pytest
import torch

from evaluation import grounding
from evaluation.protocols import grounding_maps, mean_patch_vectors
from evaluation.sets import grounding_seed
from synthetic import radiograph, reports
from synthetic import dataset as synthetic
from model import DualEncoder, ModelConfig
from synthetic.dataset import FINDINGS, TRAIN_SEED
from synthetic.masks import fill_holes

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


def without_its_step(patient, findings, name):
    """The image without the finding's own drawing step (its volume loss, for atelectasis, stays);
    cardiomegaly, which has no step, without the finding."""
    if name == "cardiomegaly":
        return radiograph.render_image(patient, {k: v for k, v in findings.items() if k != name}, S)
    return radiograph.render_image(patient, findings, S, undrawn=(name,))


@pytest.mark.parametrize("name", LOCALISED)
def test_a_mask_is_where_the_finding_changed_the_picture(name):
    thr = radiograph.MASK_THRESHOLD
    for i in range(12):
        s = synthetic.make_study(TRAIN_SEED, i, S, only=name)
        mask = radiograph.finding_masks(s.patient, s.findings, S)[name]
        assert mask.shape == (S, S) and mask.dtype == bool
        changed = np.abs(s.image - without_its_step(s.patient, s.findings, name)) > thr
        assert mask.any() and not (mask & ~fill_holes(changed)).any()  # inside the (filled) change
        assert (mask & changed).sum() >= 0.9 * changed.sum()           # and nearly all of it
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
            changed = np.abs(s.image - without_its_step(s.patient, s.findings, name)) > radiograph.MASK_THRESHOLD
            assert not (mask & ~fill_holes(changed)).any() and (mask & changed).sum() >= 0.9 * changed.sum()
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
    """A model built by hand whose score comes from one patch, `hot` (row, column): a single 8 x 8
    patch convolution whose output channel 0 is the patch's mean brightness and channel 1 a
    constant, no positions, the transformer block an identity (its residual branches zeroed), and
    a projection that reads channel 0 alone. The image is dark except at the hot patch, so the
    maximum of channel 0, the only one the score reads, is the hot patch's; the text is e0."""
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
        model.image_proj.weight.zero_()
        model.image_proj.weight[0, 0] = 1.0
    image = torch.zeros(1, 1, 32, 32)
    r, c = hot
    image[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 1.0
    return model, image, torch.eye(8)[0]


@pytest.mark.parametrize("hot", [(1, 2), (0, 0), (3, 1)])
def test_a_score_from_one_patch_is_that_patchs_share(hot):
    model, image, text = aligned_model(hot)
    with torch.no_grad():
        shares = model.patch_shares(image, text[None])[0]                  # (16,)
        score = model.encode_image(image)[0] @ text
        sim = grounding.similarity_map(model, image, text)
    r, c = hot
    want = torch.zeros(16)
    want[r * 4 + c] = 1.0                       # the whole score, cos = 1, is the hot patch's
    torch.testing.assert_close(shares, want)
    assert score.item() == pytest.approx(1.0)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = True
    assert sim.shape == (1, 32, 32) and grounding.pointing_game(sim[0], inside) == 1.0
    assert grounding.signed_cnr(sim[0], inside) > 1.0
    # uint8 images are read as /255, a (B, D) text batch works like one shared text
    again = grounding.similarity_map(model, (image * 255).to(torch.uint8), text[None] * 3)
    torch.testing.assert_close(again, sim)


@pytest.mark.parametrize("pool", ["max", "mean", "attn"])
def test_the_shares_add_up_to_the_image_text_cosine(pool):
    torch.manual_seed(0)
    model = DualEncoder(tiny(pool=pool)).double().eval()
    if pool == "attn":               # learned weights, not the uniform ones it starts from
        torch.nn.init.normal_(model.visual.attn_pool[-1].weight)
    images, text = torch.rand(3, 1, 32, 32, dtype=torch.float64), torch.randn(3, 24, dtype=torch.float64)
    with torch.no_grad():
        shares = model.patch_shares(images, text)
        cosine = (model.encode_image(images) * torch.nn.functional.normalize(text, dim=-1)).sum(-1)
    assert shares.shape == (3, 16)
    torch.testing.assert_close(shares.sum(1), cosine, rtol=0, atol=1e-12)
    assert (shares != 0).sum(1).min() > 1      # spread over several patches, not one term
    with torch.no_grad():                      # the vectors behind the shares add up to the embedding
        vectors = model.patch_vectors(images)
    assert vectors.shape == (3, 16, 24)
    torch.testing.assert_close(vectors.sum(1), model.encode_image(images), rtol=0, atol=1e-12)


@pytest.mark.parametrize("pool", ["max", "mean", "attn"])
def test_the_contrast_map_splits_the_score_minus_the_sets_mean_score(pool):
    """Contrast map of item i = upsampled patch_shares(I_i, t_i) - mean_j patch_shares(I_j, t_i),
    computed the slow way, image by image; its grid adds up to cos(I_i, t_i) - mean_j cos(I_j, t_i)."""
    torch.manual_seed(1)
    model = DualEncoder(tiny(pool=pool)).double().eval()
    if pool == "attn":
        torch.nn.init.normal_(model.visual.attn_pool[-1].weight)
    images, text = torch.rand(4, 1, 32, 32, dtype=torch.float64), torch.randn(4, 24, dtype=torch.float64)
    with torch.no_grad():
        mean = model.patch_vectors(images).mean(0)
        got = grounding.similarity_map(model, images, text, mean_vectors=mean)
        own = model.patch_shares(images, text)
        others = torch.stack([model.patch_shares(images, t.expand(4, -1)).mean(0) for t in text])
        cos = model.encode_image(images) @ torch.nn.functional.normalize(text, dim=-1).T   # (image, text)
    torch.testing.assert_close(got, grounding.upsample_grid(own - others, 32), rtol=0, atol=1e-12)
    torch.testing.assert_close((own - others).sum(1), cos.diag() - cos.mean(0), rtol=0, atol=1e-12)
    with torch.no_grad():    # a set of one image, four times: nothing tells them apart
        same = images[:1].expand(4, -1, -1, -1)
        flat = grounding.similarity_map(model, same, text, model.patch_vectors(same).mean(0))
    assert flat.abs().max() < 1e-12
    # batched over the set as eval.py runs it: the same mean
    batched = mean_patch_vectors(model.float(), images.float(), "cpu", batch_size=3)
    torch.testing.assert_close(batched, mean.float(), rtol=0, atol=1e-5)


def test_the_contrast_map_points_at_what_sets_the_image_apart():
    """Two images of the hand-built model, each bright at its own patch: each scores 1 with e0, so
    the share map of either is its hot patch alone, and the contrast map (the pair's mean taken out)
    is +1/2 at its own hot patch, -1/2 at the other's and 0 elsewhere."""
    model, first, text = aligned_model((1, 2))
    _, second, _ = aligned_model((3, 1))
    images = torch.cat([first, second])
    with torch.no_grad():
        mean = model.patch_vectors(images).mean(0)
        maps = grounding.similarity_map(model, images, text, mean_vectors=mean)
    want = torch.zeros(2, 4, 4)
    want[0, 1, 2], want[0, 3, 1], want[1, 3, 1], want[1, 1, 2] = 0.5, -0.5, 0.5, -0.5
    torch.testing.assert_close(maps, grounding.upsample_grid(want.view(2, 16), 32))


def test_with_a_class_token_the_shares_are_the_patch_cosines():
    """pool="cls" has no exact split (the docstring says why): each patch's cosine with the text
    through image_proj, over P, which is not the score."""
    torch.manual_seed(0)
    model = DualEncoder(tiny(pool="cls")).double().eval()
    images, text = torch.rand(2, 1, 32, 32, dtype=torch.float64), torch.randn(2, 24, dtype=torch.float64)
    with torch.no_grad():
        shares = model.patch_shares(images, text)
        want = torch.einsum("bpd,bd->bp", model.encode_patches(images),
                            torch.nn.functional.normalize(text, dim=-1)) / 16
        cosine = (model.encode_image(images) * torch.nn.functional.normalize(text, dim=-1)).sum(-1)
    torch.testing.assert_close(shares, want, rtol=0, atol=1e-12)
    assert not torch.allclose(shares.sum(1), cosine)


def test_the_map_is_the_bilinear_upsampling_of_the_patch_shares():
    torch.manual_seed(0)
    model = DualEncoder(tiny()).eval()
    images, text = torch.rand(2, 1, 32, 32), torch.randn(2, 24)
    with torch.no_grad():
        sim = grounding.similarity_map(model, images, text)
        grid = model.patch_shares(images, text).view(2, 1, 4, 4)
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
    # signed: the same number, negative when the region is darker than the rest
    assert grounding.signed_cnr(MAP, MASK) == pytest.approx(want, rel=1e-12)
    assert grounding.signed_cnr(-MAP, MASK) == pytest.approx(-want, rel=1e-12)
    assert grounding.signed_cnr(-MASK.float(), MASK) == -math.inf


def test_cnr_of_a_constant_map_and_of_the_mask_itself():
    assert grounding.cnr(torch.full((4, 4), 0.42), MASK) == 0.0  # no contrast: 0/0 is 0
    # in float64 the mean of twelve 0.1s is not 0.1; the variance must still be 0, the score 0.0
    assert grounding.signed_cnr(torch.full((4, 4), 0.1, dtype=torch.float64), MASK) == 0.0
    assert grounding.signed_cnr(MASK.double() * 0.6 + 0.1, MASK) == math.inf  # 0.7 in, 0.1 out
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
    assert out["per_class"]["nodule"] == {"n": 1, "pointing_game": 1.0, "cnr": cnr_a, "signed_cnr": cnr_a,
                                          "miou": grounding.miou(MAP, MASK)}
    assert out["per_class"]["effusion"]["signed_cnr"] == pytest.approx((cnr_a - cnr_b) / 2)  # {0, 1}: darker
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
# The synthetic grounding set, and grounding in the benchmark (eval.py)

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
        report = reports.write_report(findings, rng)
        assert report.startswith("FINDINGS: " + text[:-1])      # its first sentence, which
        assert any(word in text.lower() for word in NAMED[name]), text   # names the finding
        image, masks = radiograph.render_with_masks(patient, findings, 32)
        assert torch.equal(g["masks"][i], torch.from_numpy(masks[name])) and g["masks"][i].any()
    # seeded apart from the training and both evaluation sets
    seeds = {grounding_seed(s) for s in (synthetic.EVAL_SEED, synthetic.SECOND_EVAL_SEED)}
    assert len(seeds) == 2 and not seeds & {TRAIN_SEED, synthetic.EVAL_SEED, synthetic.SECOND_EVAL_SEED}


def test_evaluate_reports_grounding_beside_its_nulls():
    import eval as ev
    from data import tokenize, train_tokenizer
    g = synthetic.grounding_set(4, 32)
    tokenizer = train_tokenizer(g["texts"], 200)
    model = DualEncoder(tiny(vocab_size=tokenizer.get_vocab_size())).eval()
    gr = {**g, "source": "synthetic"}
    res = ev.evaluate(model, tokenizer, "cpu", 32, zs=False, ret=False, gr=gr)
    out = res["grounding"]
    assert res["evaluated_on"]["grounding"] == {"source": "synthetic", "phrases": 20,
                                                "seed": synthetic.GROUNDING_SEED}
    for texts, got in ((g["texts"], out), (g["unlocated"], out["unlocated"])):
        maps = grounding_maps(model, tokenizer, g["images"], texts, "cpu")
        for name in synthetic.GROUNDING_CLASSES:
            rows = [i for i, label in enumerate(g["labels"]) if label == name]
            c = got["per_class"][name]
            assert c["n"] == 4
            for metric in ("pointing_game", "cnr", "signed_cnr"):
                fn = getattr(grounding, metric)
                assert c[metric] == pytest.approx(sum(fn(maps[i], g["masks"][i]) for i in rows) / 4)
    # the null on the model's 4 x 4 grid, with its own seed: the same call gives the same numbers
    assert out["random_grid"] == grounding.random_grid_null(g["labels"], g["masks"], 4)
    assert (out["random_grid"]["grid"], out["random_grid"]["draws"]) == (4, grounding.NULL_DRAWS)
    # the contrast maps: the set's mean patch vectors taken out, for both sentence sets
    mean = mean_patch_vectors(model, g["images"], "cpu")
    with torch.no_grad():      # batched as eval.py runs it: grounding.similarity_map's maps
        text = model.encode_text(tokenize(tokenizer, g["texts"], 16)[0])
        one_go = grounding.similarity_map(model, g["images"], text, mean_vectors=mean)
    torch.testing.assert_close(grounding_maps(model, tokenizer, g["images"], g["texts"], "cpu", batch_size=7,
                                              mean_vectors=mean), one_go, rtol=0, atol=1e-5)
    for texts, key in ((g["texts"], "contrast"), (g["unlocated"], "contrast_unlocated")):
        maps = grounding_maps(model, tokenizer, g["images"], texts, "cpu", mean_vectors=mean)
        assert out[key] == grounding.summarize(zip(g["labels"], maps, g["masks"]))
        assert out[key] != (out if key == "contrast" else out["unlocated"])
    assert "text_prior" not in out              # no prior maps given: none scored
    table = ev.format_table(res)
    for row in ("grounding, mean of 5 classes", "random 4x4 grid", "model: contrast map",
                "no place: share map", "no place: contrast map"):
        assert row in table
    assert "text-only prior" not in table
