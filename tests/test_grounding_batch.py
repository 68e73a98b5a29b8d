"""evaluation.grounding's batched scoring (score_batch, and summarize on top of it): the same numbers
as the one-map functions, item by item, and the same refusals with the same messages."""

import math

import pytest
import torch

from evaluation import grounding
from test_grounding import MAP, MASK   # the 4 x 4 map and mask of the one-map tests


def batch_items(seed=0):
    """(class, map, mask) items of three shapes, with the cases the metrics treat apart: noise,
    bilinear grids, constant maps, maps equal to the mask or to minus it (CNR +-inf), plateaus of
    equal maxima wholly inside or partly outside the mask. Some in float64 with values such as
    0.1, whose sums are not exact (float32 values have short mantissas: sums of them are)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for h, w in [(4, 4), (12, 20), (64, 64)]:
        for k in range(6):
            mask = torch.rand(h, w, generator=g) < (0.1, 0.5)[k % 2]
            mask[0, 0], mask[-1, -1] = True, False  # some inside, some outside
            noise = torch.rand(h, w, generator=g)
            plateau = torch.where(mask, 2.0, noise)
            plateau[-1, -1] = 2.0 if k % 2 else noise[-1, -1]  # a maximum outside, or none
            items += [("noise", noise, mask), ("noise", noise.double() * 1e3 - 500, mask),
                      ("flat", torch.full((h, w), 0.3), mask),
                      ("flat", torch.full((h, w), 0.1, dtype=torch.float64), mask),
                      ("mask", mask.float(), mask), ("mask", mask.double() * 0.6 + 0.1, mask),
                      ("minus mask", -mask.double(), mask), ("ties", plateau, mask)]
            if h == w:
                items.append(("grid", grounding.upsample_grid(torch.rand(1, 16, generator=g), h)[0], mask))
    return items


def same(metric, got, want):
    """Equal, NaN for NaN; CNR to 1e-12 relative (its sums add in another order when batched)."""
    if math.isnan(want) or not math.isfinite(want) or metric in ("pointing_game", "miou"):
        return got == want or (math.isnan(got) and math.isnan(want))
    return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("chunk", [300, grounding.CHUNK_PIXELS])  # 300: many chunks, one map of 64 x 64
def test_score_batch_is_the_functions_item_by_item(chunk, monkeypatch):
    monkeypatch.setattr(grounding, "CHUNK_PIXELS", chunk)
    items = batch_items()
    for shape in {tuple(sim.shape) for _, sim, _ in items}:
        sims = [sim.double() for _, sim, _ in items if tuple(sim.shape) == shape]  # one dtype, to stack
        masks = [mask for _, sim, mask in items if tuple(sim.shape) == shape]
        as_tensors = grounding.score_batch(torch.stack(sims), torch.stack(masks))
        for got in (grounding.score_batch(sims, masks), as_tensors):
            for metric, fn in grounding.METRICS.items():
                want = [fn(sim, mask) for sim, mask in zip(sims, masks)]
                assert all(same(metric, a, b) for a, b in zip(got[metric], want, strict=True)), (shape, metric)
    # the edge cases are in there: 0.0 and +-inf CNR, a miss and a hit in the pointing game on a plateau
    out = grounding.summarize(items)["per_class"]
    assert out["flat"]["signed_cnr"] == out["flat"]["miou"] == out["flat"]["pointing_game"] == 0.0
    assert (out["mask"]["signed_cnr"], out["minus mask"]["signed_cnr"]) == (math.inf, -math.inf)
    assert out["mask"]["miou"] == out["mask"]["pointing_game"] == 1.0
    assert out["ties"]["pointing_game"] == 0.5


def test_summarize_is_the_functions_one_by_one():
    items = batch_items(seed=1)
    items = items[::2] + [("edema", torch.zeros(4, 4), None)] + items[1::2]  # shapes interleaved
    scores = {}
    for name, sim, mask in items:
        if mask is not None:
            for metric, fn in grounding.METRICS.items():
                scores.setdefault(name, {}).setdefault(metric, []).append(fn(sim, mask))

    def mean(values):  # as summarize adds up: in the items' order
        return sum(values) / len(values)

    per_class = {name: {"n": len(s["miou"]), **{m: mean(s[m]) for m in grounding.METRICS}}
                 for name, s in sorted(scores.items())}
    overall = {m: mean([v for s in scores.values() for v in s[m]]) for m in grounding.METRICS}
    class_mean = {m: mean([c[m] for c in per_class.values()]) for m in grounding.METRICS}

    out = grounding.summarize(items)
    assert out["per_class"].keys() == per_class.keys() and out["no_place"] == {"edema": 1}
    for name, want in per_class.items():
        assert out["per_class"][name]["n"] == want["n"]
        for m in grounding.METRICS:
            assert same(m, out["per_class"][name][m], want[m]), (name, m)
    assert out["overall"]["n"] == sum(c["n"] for c in per_class.values())
    for m in grounding.METRICS:
        assert same(m, out["overall"][m], overall[m]) and same(m, out["class_mean"][m], class_mean[m]), m
    finite = [c["signed_cnr"] for name, c in per_class.items() if name not in ("mask", "minus mask")]
    assert len(finite) == 4 and any(v != 0 for v in finite)  # not only the edge cases agree


@pytest.mark.parametrize("bad", ["shape", "3-d", "nan", "inf", "empty", "full"])
def test_summarize_refuses_a_bad_item_as_the_functions_do(bad, monkeypatch):
    monkeypatch.setattr(grounding, "CHUNK_PIXELS", 40)  # the bad item in the second chunk of 2 maps
    full, empty = torch.ones(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)
    sim, mask = {"shape": (MAP, MASK[:3]), "3-d": (MAP[None], MASK[None]),
                 "nan": (MAP.masked_fill(MASK, math.nan), MASK), "empty": (MAP, empty), "full": (MAP, full),
                 "inf": (MAP.masked_fill(~MASK, -math.inf), MASK)}[bad]
    with pytest.raises(ValueError) as want:
        for fn in grounding.METRICS.values():  # what summarize did before it scored in batches
            fn(sim, mask)
    good = [("nodule", MAP * k, MASK) for k in range(1, 4)]
    with pytest.raises(ValueError) as got:
        grounding.summarize(good + [("nodule", sim, mask)] + good)
    assert str(got.value) == str(want.value)
    if bad not in ("shape", "3-d"):
        with pytest.raises(ValueError) as got:
            grounding.score_batch(torch.stack([MAP, MAP, MAP, sim]), torch.stack([MASK, MASK, MASK, mask]))
        assert str(got.value) == str(want.value)
