"""experiments/contrast_maps.py: the state change is zero where nothing was drawn, and the table
reads the JSON (the contrast map itself: tests/test_grounding.py)."""

import torch

from experiments.contrast_maps import drawn_and_undrawn, state_change
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
        scores["grid ceiling"] = {"pointing_game": 0.69}
        return {"first set": scores, "second set": scores, "image_size": 64, "patch_size": 8}
    text = table({"out/msd/seed0": run(0.2), "out/msd/seed1": run(0.4), "out/clip/seed0/": run(0.5),
                  "out/msd/seed0:teacher": {**run(0.1), "teacher": True}})
    assert "| msd | 2 | 0.300 ± 0.141 | 0.300 ± 0.141 | 0.300 ± 0.141 | 0.600 ± 0.283 |" in text
    assert "| clip | 1 | 0.500 |" in text and "| msd teacher | 1 | 0.100 |" in text
    assert "| the best any map on it can do (8x8 grid, 64 px) |  | 0.690 | 0.690 | 0.690 |  | 0.690 |" in text
    fine = run(0.6)
    fine["patch_size"] = 4          # the same images on another grid: its own rows, named by its try
    for where in ("first set", "second set"):
        fine[where]["grid ceiling"] = {"pointing_game": 0.9}
    text = table({"out/msd/seed0": run(0.2), "out/msd/seed1": run(0.4), "out/patch4/seed0": fine})
    assert "| the best any map on it can do (8x8 grid, 64 px) |  | 0.690 |" in text
    assert "| the best any map on it can do (16x16 grid, 64 px, patch4) |  | 0.900 |" in text
    assert "| the pixels' own change (8x8 grid, 64 px) |  | 0.700 |" in text
