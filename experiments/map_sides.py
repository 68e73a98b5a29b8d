"""Which lung does a map point at? For the one-sided findings of the grounding set, the share of maps
whose maximum lies on the finding's side of the image, and on the other side.

    python -m experiments.map_sides results/localise/msd/seed0 results/localise/window1/seed0
    python -m experiments.map_sides results/localise/*/seed* --json docs/results/map_sides.json

A pointing game near zero says that a map misses; this says where it goes instead. A finding is
one-sided when its whole mask lies in one half of the image (left of the middle column, or right
of it); bilateral ones are left out. The maximum is that of the model's patch-share grid
(model.patch_shares: the map before upsampling), on the sentences of the report (which name the
side) and on those that name no place. Numbers are per run, on the synthetic grounding set
eval.py scores (seed 4004, 50 studies per finding).
"""

import argparse
import datetime
import json
import os
import sys


def sides(grids, masks):
    """grids (n, g, g) the maps on the patch grid, masks (n, H, W) bool. Returns (same, other, n):
    how many of the one-sided masks have the grid's maximum on their side, on the other side, and
    how many masks were one-sided. A maximum in the middle column of an odd grid counts for neither."""
    same = other = n = 0
    for grid, mask in zip(grids, masks):
        W, g = mask.shape[-1], grid.shape[-1]
        columns = mask.any(0).nonzero().flatten()
        if columns.numel() == 0 or (columns.min() < W / 2 <= columns.max()):
            continue                                     # empty, or on both sides: not one-sided
        n += 1
        mask_left = bool(columns.max() < W / 2)
        col = int(grid.flatten().argmax()) % g
        if 2 * col + 1 == g:
            continue
        same += (2 * col + 1 < g) == mask_left
        other += (2 * col + 1 < g) != mask_left
    return same, other, n


def measure(run, n_per_class=50):
    """{"report": {...}, "unlocated": {...}} for the checkpoint in folder `run`: each
    {"same_side", "other_side", "one_sided"} as shares of the one-sided studies."""
    import torch

    from evaluation.protocols import embed_texts
    from evaluation.sets import synthetic_grounding
    from plumbing.checkpoint import load_checkpoint
    from synthetic.dataset import GROUNDING_SEED

    model, tokenizer, _ = load_checkpoint(run)
    g = synthetic_grounding(n_per_class, model.cfg.image_size, GROUNDING_SEED)
    grid = model.cfg.image_size // model.cfg.patch_size
    out = {}
    for name, texts in (("report", g["texts"]), ("unlocated", g["unlocated"])):
        text = embed_texts(model, tokenizer, texts, "cpu")
        with torch.no_grad():
            shares = model.eval().patch_shares(g["images"].float() / 255, text)   # (n, P)
        same, other, n = sides(shares.view(-1, grid, grid), g["masks"])
        out[name] = {"same_side": same / n, "other_side": other / n, "one_sided": n}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="train.py output folders")
    p.add_argument("--json", help="also write {run: measure(run)} here (runs already in it are kept)")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not os.path.exists(os.path.join(r, "ckpt.pt"))]
    if missing:
        print(f"map_sides: error: no ckpt.pt in {', '.join(missing)}", file=sys.stderr)
        return 2
    results = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    from experiments.studies import commit, machine
    for run in args.runs:
        results[run] = measure(run)
        for name, r in results[run].items():
            print(f"{run}: {name} sentences: maximum on the finding's side {r['same_side']:.2f}, "
                  f"on the other side {r['other_side']:.2f} ({r['one_sided']} one-sided studies)")
        results[run]["measured"] = {"commit": commit(), "machine": machine(),
                                    "date": datetime.date.today().isoformat()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
