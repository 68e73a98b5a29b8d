"""The synthetic findings' masks are their place (radiograph.finding_masks): one region per side a
finding is drawn on, no speckle, the image untouched; and the connected-pieces helpers they use
(synthetic/masks.py) on hand-made arrays."""

import numpy as np
import pytest

from synthetic import radiograph
from synthetic.dataset import GROUNDING_SEED, TRAIN_SEED, draw_study, grounding_set, make_study
from synthetic.masks import components, fill_holes, largest_component

S = 64
N = 20


def test_components_largest_and_holes_on_a_hand_made_array():
    a = np.zeros((7, 9), dtype=bool)
    a[1:4, 1:4] = True          # a 3 x 3 blob
    a[5:7, 6:8] = True          # a 2 x 2 blob in the corner
    a[4, 4] = True              # touches the 3 x 3 blob at a corner only: a piece of its own
    labels, n = components(a)
    assert n == 3 and labels.shape == a.shape and set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels > 0).tolist() == a.tolist()
    assert len(set(labels[1:4, 1:4].ravel())) == 1 and len(set(labels[5:7, 6:8].ravel())) == 1
    big = largest_component(a)
    assert big.sum() == 9 and big[1:4, 1:4].all()
    assert components(np.zeros((3, 3), dtype=bool))[1] == 0 and not largest_component(np.zeros((3, 3), bool)).any()
    # a snake that turns back on itself is still one piece
    snake = np.zeros((9, 9), dtype=bool)
    snake[::2] = True
    snake[1::4, -1] = snake[3::4, 0] = True
    assert components(snake)[1] == 1
    ring = np.zeros((6, 6), dtype=bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False      # a hole ...
    notch = ring.copy()
    notch[2, 1] = False         # ... but a notch to the outside makes it no hole
    assert fill_holes(ring)[1:5, 1:5].all() and fill_holes(ring).sum() == 16
    assert (fill_holes(notch) == notch).all()


@pytest.fixture(scope="module")
def grounding():
    return grounding_set(N, S)


def test_every_grounding_mask_is_one_piece_per_side(grounding):
    for k, (label, mask) in enumerate(zip(grounding["labels"], grounding["masks"].numpy())):
        side = draw_study(GROUNDING_SEED, k % N, only=label)[2][label]["side"]
        assert mask.any(), (label, k)
        assert components(mask)[1] == len(radiograph.sides_of(side)), (label, side)  # one per lung
        assert (fill_holes(mask) == mask).all()                                      # no holes


@pytest.mark.parametrize("name", ["atelectasis", "consolidation", "nodule", "pleural effusion", "pneumothorax"])
def test_a_mask_is_the_change_of_the_findings_own_step_without_the_speckle(name):
    for i in range(8):
        _, patient, findings = draw_study(GROUNDING_SEED, i, only=name)
        image, masks = radiograph.render_with_masks(patient, findings, S)
        mask = masks[name]
        no_step = radiograph.render_image(patient, findings, S, undrawn=(name,))
        changed = np.abs(image - no_step) > radiograph.MASK_THRESHOLD
        assert not (mask & ~fill_holes(changed)).any()          # inside the (filled) change
        assert (mask & changed).sum() >= 0.9 * changed.sum()    # and keeps nearly all of it
        whole = np.abs(image - radiograph.render_image(patient, {}, S)) > radiograph.MASK_THRESHOLD
        if name == "atelectasis":   # the whole finding's change, volume loss included: speckle
            assert components(whole)[1] > 10 and whole.sum() > 2 * mask.sum()
        else:                       # the finding's step is all of it
            assert (whole == changed).all()


def test_undrawn_skips_a_step_and_keeps_the_geometry():
    _, patient, findings = draw_study(GROUNDING_SEED, 0, only="consolidation")
    no_step = radiograph.render_image(patient, findings, S, undrawn=("consolidation",))
    assert no_step.tobytes() == radiograph.render_image(patient, {}, S).tobytes()
    _, patient, findings = draw_study(GROUNDING_SEED, 0, only="atelectasis")   # volume loss stays
    no_band = radiograph.render_image(patient, findings, S, undrawn=("atelectasis",))
    assert no_band.tobytes() != radiograph.render_image(patient, {}, S).tobytes()


def test_the_image_is_render_images_byte_for_byte_and_mixed_studies_have_places():
    for i in range(30):
        s = make_study(TRAIN_SEED, i, S)           # a training-like mix of 0-3 findings
        image, masks = radiograph.render_with_masks(s.patient, s.findings, S)
        assert image.dtype == np.float32 and image.tobytes() == s.image.tobytes()
        assert image.tobytes() == radiograph.render_image(s.patient, s.findings, S).tobytes()
        for name, mask in masks.items():
            if mask is not None:
                two = s.findings[name]["side"] == "bilateral" or name == "cardiomegaly"
                assert components(mask)[1] <= (2 if two else 1), (i, name)
