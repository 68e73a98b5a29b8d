"""What a grounding score is worth (evaluation/grounding.py): the random-grid null against a direct
computation, the grid's ceiling against every one-hot map, the text-only prior by hand, and the synthetic set's two sentence sets and its
prior's disjoint reference studies (evaluation/sets.py)."""

import pytest
import torch

from evaluation import grounding
from evaluation.sets import PRIOR_OFFSET, synthetic_grounding
from synthetic.dataset import GROUNDING_CLASSES, GROUNDING_SEED

PLACE_WORDS = {"left", "right", "bilateral", "both", "upper", "middle", "mid", "lower", "base",
               "bases", "basilar", "bibasilar", "apical", "apex", "lobe", "lobes"}


def test_random_grid_null_is_its_draws_scored_as_maps():
    """On a 2 x 2 grid shown at 2 x 2 pixels the upsampling is the identity, so a draw hits when
    the masked cell holds its maximum: recompute every draw with the same generator."""
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = True
    masks[2, 0] = True                                    # the top row: two cells
    labels = ["a", "a", "b"]
    out = grounding.random_grid_null(labels, masks, grid=2, draws=50, seed=7)
    generator = torch.Generator().manual_seed(7)
    hits = {"a": [], "b": []}
    for name, mask in zip(labels, masks):
        draws = torch.rand(50, 4, generator=generator).view(50, 2, 2)
        hits[name] += [float(mask[d == d.max()].all()) for d in draws]
    for name in hits:
        assert out["per_class"][name]["n"] == len(hits[name])
        assert out["per_class"][name]["pointing_game"] == pytest.approx(sum(hits[name]) / len(hits[name]))
    assert 0 < out["per_class"]["a"]["pointing_game"] < out["per_class"]["b"]["pointing_game"] < 1
    assert (out["grid"], out["draws"], out["seed"]) == (2, 50, 7)
    again = grounding.random_grid_null(labels, masks, grid=2, draws=50, seed=7)
    other = grounding.random_grid_null(labels, masks, grid=2, draws=50, seed=8)
    assert again == out and other["overall"] != out["overall"]


def test_text_prior_is_the_mean_mask_of_the_same_sentence():
    m = torch.zeros(3, 2, 2, dtype=torch.bool)
    m[0, 0, 0] = m[1, 0, 0] = m[1, 0, 1] = m[2, 1, 1] = True
    ref_keys = [("nodule", "left"), ("nodule", "left"), ("nodule", "right")]
    got = grounding.text_prior([("nodule", "left"), ("nodule", "right"), ("nodule",),
                                ("nodule", "bilateral")], ref_keys, m)
    torch.testing.assert_close(got[0], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    torch.testing.assert_close(got[1], m[2].float())
    class_mean = m.float().mean(0)          # a key no reference has: the class's mean
    torch.testing.assert_close(got[2], class_mean)
    torch.testing.assert_close(got[3], class_mean)
    with pytest.raises(ValueError, match="no reference study of class 'effusion'"):
        grounding.text_prior([("effusion", "left")], ref_keys, m)


def test_the_synthetic_set_has_sentences_without_place_and_a_disjoint_prior():
    g = synthetic_grounding(6, 32, GROUNDING_SEED)
    n = 6 * len(GROUNDING_CLASSES)
    assert len(g["unlocated"]) == len(g["texts"]) == len(g["places"]) == n
    assert g["prior"].shape == g["prior_unlocated"].shape == (n, 32, 32)
    assert g["prior_seed"] == GROUNDING_SEED + PRIOR_OFFSET
    for sentence, name in zip(g["unlocated"], g["labels"]):
        words = set(sentence.lower().strip(".").split())
        assert not words & PLACE_WORDS and name.split()[-1] in words, sentence
    # the report's sentences do say where: each names its side (or "both"/"bi...")
    located = sum(bool(set(t.lower().replace(".", "").replace(",", "").replace("-", " ").split())
                       & PLACE_WORDS) for t in g["texts"])
    assert located == n
    # the prior's references are other studies: none of their images is a scored one
    ref = synthetic_grounding(6, 32, g["prior_seed"])
    scored = {bytes(im.numpy()) for im in g["images"]}
    assert not scored & {bytes(im.numpy()) for im in ref["images"]}
    # one class's unlocated prior is the same map for all its studies; the located one is not
    rows = [i for i, name in enumerate(g["labels"]) if name == "nodule"]
    assert all(torch.equal(g["prior_unlocated"][rows[0]], g["prior_unlocated"][i]) for i in rows)
    assert not all(torch.equal(g["prior"][rows[0]], g["prior"][i]) for i in rows)


def test_the_prior_that_reads_the_place_beats_a_random_map():
    """The reason the grounding table has a text prior column: the sentences give the place away,
    so a map that reads them and never looks at the image points better than chance."""
    g = synthetic_grounding(50, 64, GROUNDING_SEED)     # eval.py's set (a prior of fewer is noisier)
    prior = grounding.summarize(zip(g["labels"], g["prior"], g["masks"]))["class_mean"]
    null = grounding.random_grid_null(g["labels"], g["masks"], grid=8)["class_mean"]
    assert prior["pointing_game"] > 3 * null["pointing_game"]
    assert prior["signed_cnr"] > 1.0 > abs(null["signed_cnr"]) * 10


def test_the_grid_ceiling_is_the_best_of_every_tilted_peak():
    """An item is a hit when some map's maxima all lie in its mask. The maps that can do best put a
    peak on one cell and tip it towards one side with its neighbours: every such map, scored by
    pointing_game, against grid_ceiling, on hand-made masks and on random blobs."""
    def tilted(grid):
        for r in range(grid):
            for c in range(grid):
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        v = torch.zeros(grid, grid)
                        for rr, cc in ((r + dr, c), (r, c + dc), (r + dr, c + dc)):
                            if 0 <= rr < grid and 0 <= cc < grid:
                                v[rr, cc] = 0.5
                        v[r, c] = 1.0
                        yield v.flatten()
    maps = grounding.upsample_grid(torch.stack(list(tilted(4))), 32)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True              # a corner cell's flat run at the border: a hit
    masks[1, 11:13, 11:13] = True          # the 2 x 2 pixels around cell (1, 1)'s centre: a hit
    masks[2, 12:13, 11:12] = True          # one of them: a tilted peak points at it alone
    masks[3, 14:18, 14:18] = True          # between the centres of cells (1, 1) and (2, 2): a miss
    generator = torch.Generator().manual_seed(0)
    blobs = grounding.upsample_grid(torch.rand(12, 64, generator=generator), 32) > 0.8
    every = list(masks) + [b for b in blobs if b.any()]
    want = [max(grounding.pointing_game(m, mask) for m in maps) for mask in every]
    assert want[:4] == [1.0, 1.0, 1.0, 0.0] and 0 < sum(want[4:]) < len(want) - 4
    got = [grounding.grid_ceiling(["a"], [mask], 4)["class_mean"]["pointing_game"] for mask in every]
    assert got == want
    out = grounding.grid_ceiling(["a", "a", "b", "b", "b"], list(masks) + [None], 4)
    assert out == {"per_class": {"a": {"n": 2, "pointing_game": 1.0}, "b": {"n": 2, "pointing_game": 0.5}},
                   "class_mean": {"pointing_game": 0.75}, "grid": 4}
