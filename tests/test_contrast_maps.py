"""experiments/contrast_maps.py: the state change is zero where nothing was drawn, and the table
reads the JSON, the shifted grid adds up and sees half a patch (the contrast map itself:
tests/test_grounding.py)."""

import pytest
import torch

from experiments.contrast_maps import drawn_and_undrawn, shifted_shares, state_change
from model import DualEncoder, ModelConfig

CFG = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
           vocab_size=50, context_length=16, text_width=32, text_layers=1, text_heads=2, embed_dim=24)

def test_state_change_is_zero_for_the_same_image_and_the_undrawn_study_has_no_finding():
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**CFG)).double().eval()
    images = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert state_change(model, images, images).abs().max() == 0
        assert state_change(model, images, images.flip(-1)).min() > 0
    drawn, undrawn, masks, labels = drawn_and_undrawn(1, 32, 4004)
    assert len(labels) == 5 == len(set(labels)) and drawn.shape == undrawn.shape == (5, 1, 32, 32)
    changed = (drawn - undrawn).abs().flatten(1).amax(1)
    assert (changed > 0).all() and masks.flatten(1).any(1).all()

def test_table_is_the_mean_and_spread_per_try():
    from experiments.contrast_maps import COLUMNS, table

    def run(pg):
        scores = {m: {"pointing_game": pg, "signed_cnr": 2 * pg} for _, m, _, _ in COLUMNS}
        scores["pixel change"] = {"pointing_game": 0.7, "signed_cnr": 2.9}
        scores["grid ceiling"], scores["shifted grid ceiling"] = {"pointing_game": 0.69}, {"pointing_game": 0.95}
        scores["grid random"] = {"pointing_game": 0.05, "signed_cnr": 0.01}
        scores["shifted grid random"] = {"pointing_game": 0.03, "signed_cnr": 0.02}
        return {"first set": scores, "second set": scores, "image_size": 64, "patch_size": 8}
    text = table({"out/msd/seed0": run(0.2), "out/msd/seed1": run(0.4), "out/clip/seed0/": run(0.5),
                  "out/msd/seed0:teacher": {**run(0.1), "teacher": True}})
    assert "| msd | 2 | 0.300 ± 0.141 | 0.300 ± 0.141 | 0.300 ± 0.141 | 0.600 ± 0.283 |" in text
    assert "| clip | 1 | 0.500 |" in text and "| msd teacher | 1 | 0.100 |" in text
    on = " (8x8 grid, shifted 16x16; 64 px) |  | "      # a shifted column: the finer grid's references
    assert "| the best any map on it can do" + on + "0.690 | 0.690 | 0.690 |  | 0.690 | 0.690 |  | 0.690 | 0.950 |  | 0.950 | 0.950 |" in text
    assert "| random maps on the grid" + on + "0.050 | 0.050 | 0.050 | 0.010 | 0.050 | 0.050 | 0.010 | 0.050 | 0.030 | 0.020 | 0.030 | 0.030 |" in text
    old = run(0.3)                  # measured before the shifted maps: not measured, not zero
    for where in ("first set", "second set"):
        for m in [m for m in old[where] if m.startswith("shifted")]:
            del old[where][m]
    text = table({"out/msd/seed0": run(0.2), "out/mean/seed0": old})
    assert "| mean | 1 | 0.300 | 0.300 | 0.300 | 0.600 | 0.300 | 0.300 | 0.600 | 0.300 | – | – | – | – |" in text
    fine = run(0.6)
    fine["patch_size"] = 4          # the same images on another grid: its own rows, named by its try
    for where in ("first set", "second set"):
        fine[where]["grid ceiling"] = {"pointing_game": 0.9}
    text = table({"out/msd/seed0": run(0.2), "out/msd/seed1": run(0.4), "out/patch4/seed0": fine})
    assert "| the best any map on it can do (8x8 grid, shifted 16x16; 64 px) |  | 0.690 |" in text
    assert "| the best any map on it can do (16x16 grid, shifted 32x32; 64 px, patch4) |  | 0.900 |" in text
    assert "| the pixels' own change (8x8 grid, shifted 16x16; 64 px) |  | 0.700 |" in text


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_the_shifted_grid_adds_up_to_the_mean_of_its_views_scores(pool):
    """shifted_shares, the slow way: each view rolled by hand, each view's contrast score against
    the set seen the same way; the fine cells add up to their mean, and one shift is the plain map."""
    torch.manual_seed(2)
    model = DualEncoder(ModelConfig(**CFG, pool=pool)).double().eval()
    images, text = torch.rand(3, 1, 32, 32, dtype=torch.float64), torch.randn(3, 24, dtype=torch.float64)
    t = torch.nn.functional.normalize(text, dim=-1)
    with torch.no_grad():
        fine = shifted_shares(model, images, text, set_images=images, shifts=2)   # (3, 8 x 8)
        want = 0
        for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4)):
            view = torch.roll(images, (-dy, -dx), (2, 3))
            cos = model.encode_image(view) @ t.T                                   # (image, text)
            want = want + (cos.diag() - cos.mean(0)) / 4
        plain = shifted_shares(model, images, text, shifts=1)
    assert fine.shape == (3, 64)
    torch.testing.assert_close(fine.sum(1), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(plain, model.patch_shares(images, text), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shifts 3 must divide the patch size 8"):
        shifted_shares(model, images, text, shifts=3)


def test_the_shifted_grid_finds_half_a_patch():
    """A model whose score is each patch's brightness: a bright 4 x 4 block is one of four cells of
    one 8 x 8 patch, which a single view cannot tell apart; the shifted grid's maximum is that
    cell alone, and every view sees the whole block (the cells add up to its brightness)."""
    class Brightness:
        cfg = ModelConfig(image_size=32, patch_size=8)

        def patch_shares(self, images, text):
            return torch.nn.functional.avg_pool2d(images, 8).flatten(1)

    images = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    images[0, 0, 12:16, 20:24] = 1.0                      # fine cell (3, 5): inside patch (1, 2)
    fine = shifted_shares(Brightness(), images, torch.ones(1, 1), shifts=2).view(8, 8)
    assert (fine == fine.max()).nonzero().tolist() == [[3, 5]]
    torch.testing.assert_close(fine.sum(), torch.tensor(16 / 64, dtype=torch.float64))
    plain = shifted_shares(Brightness(), images, torch.ones(1, 1), shifts=1).view(4, 4)
    assert (plain == plain.max()).nonzero().tolist() == [[1, 2]]
