"""Does the model keep a finding's evidence where the finding is? Two readings of a trained model.

    python -m experiments.contrast_maps results/localise/msd-ladder/seed0 ...
    python -m experiments.contrast_maps RUNS... --json docs/results/contrast_maps.json
    python -m experiments.contrast_maps RUNS... --teacher --json ...   # their EMA teachers
    python -m experiments.contrast_maps report --json docs/results/contrast_maps.json   # the table

1. The share map and the contrast map (evaluation.grounding.similarity_map, as eval.py draws them):
   each patch's share of the image-text cosine, and its share of that cosine minus the set's mean
   cosine for the same sentence, the score by which the sentence picks its image out of the set.
2. The state change. On the synthetic set each study can be drawn again without its finding
   (same patient, same anatomy). How far each patch's final state moves between the two says
   where the model's features hold the finding, with no readout at all; the pixels' own change,
   averaged per patch, is what a map that knew the drawing exactly would score on the same grid;
   evaluation.grounding.grid_ceiling is the best pointing game any map on that grid can reach.

3. The shifted contrast map (shifted_shares): the same model seen through 2 x 2
   views of each image rolled by half a patch, a grid twice as fine; scored with that grid's own
   random-map null and ceiling.

All are scored as eval.py scores (evaluation.grounding.summarize: the pointing game and signed
CNR, class means) on the synthetic grounding set of the first and the second evaluation set, on
the report's sentences and on those that name the finding alone.
"""

import argparse
import datetime
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def shifted_shares(model, images, text_features, set_images=None, shifts=2):
    """A grid `shifts` times finer than the model's patches, from the same model, untrained for it.

    Each image is seen shifts x shifts times, rolled (circularly, so no pixel is lost) up and left
    by (i, j) * patch_size / shifts pixels: in view (i, j) each patch covers a block of shifts x
    shifts cells of the fine grid, offset by (i, j) cells. A fine cell gets, in every view, the share
    of the patch covering it over shifts^2, and their mean over the views. So the fine cells add up
    exactly to the mean over the views of cos(encode_image(view), t) (with set_images: of the
    contrast score, each view against the set's mean image seen the same way), and a finding of
    half a patch can be told from its neighbour, where one view's 8 x 8 grid cannot.

    images (B, C, H, W) float in [0, 1]; text_features (B, D); set_images (N, C, H, W) or None.
    Returns (B, (g * shifts)^2), row-major like model.patch_shares, for upsample_grid. It costs
    shifts^2 forward passes, and the views are images the model saw only through its augmentation's
    small shifts (a few percent) and with the border wrapped around."""
    from evaluation.grounding import contrast_shares
    p = model.cfg.patch_size
    if shifts < 1 or p % shifts:
        raise ValueError(f"shifts {shifts} must divide the patch size {p}")
    B, g, step = images.shape[0], images.shape[-1] // p, p // shifts
    fine = images.new_zeros(B, g * shifts, g * shifts)
    for i in range(shifts):
        for j in range(shifts):
            view = lambda x: torch.roll(x, shifts=(-i * step, -j * step), dims=(-2, -1))  # noqa: E731
            mean = None if set_images is None else model.patch_vectors(view(set_images)).mean(0)
            s = contrast_shares(model.patch_shares(view(images), text_features), text_features, mean)
            cells = s.reshape(B, g, g).repeat_interleave(shifts, 1).repeat_interleave(shifts, 2)
            fine += torch.roll(cells, shifts=(i, j), dims=(1, 2)) / shifts ** 2
    return (fine / shifts ** 2).flatten(1)


def state_change(model, images, undrawn):
    """(N, P): |x_p(with the finding) - x_p(without it)| of each patch's final state."""
    return (model.patch_states(images) - model.patch_states(undrawn)).norm(dim=-1)


def drawn_and_undrawn(n_per_class, image_size, seed):
    """The grounding set's studies (synthetic.dataset.grounding_set's draws) and the same patients
    drawn with no finding: (images, undrawn) float in [0, 1], masks, labels."""
    from synthetic.dataset import GROUNDING_CLASSES, draw_study, to_uint8
    from synthetic.radiograph import render_image, render_with_masks
    images, undrawn, masks, labels = [], [], [], []
    for name in GROUNDING_CLASSES:
        for i in range(n_per_class):
            _, patient, findings = draw_study(seed, i, only=name)
            image, found = render_with_masks(patient, findings, image_size)
            images.append(to_uint8(image))
            undrawn.append(to_uint8(render_image(patient, {}, image_size)))
            masks.append(torch.from_numpy(found[name]))
            labels.append(name)
    as_float = lambda x: torch.from_numpy(np.stack(x))[:, None].float() / 255   # noqa: E731
    return as_float(images), as_float(undrawn), torch.stack(masks), labels


def measure(run, n_per_class=50, eval_seeds=None, use_teacher=False):
    """{"first set"/"second set": {map: {"pointing_game", "signed_cnr", "per_class"}}} for the
    checkpoint in `run` (its EMA teacher with use_teacher), on the grounding sets of eval.py's first
    and second evaluation seeds."""
    from synthetic.dataset import EVAL_SEED, SECOND_EVAL_SEED
    from evaluation.grounding import grid_ceiling, random_grid_null, similarity_map, summarize, upsample_grid
    from evaluation.protocols import embed_texts
    from evaluation.sets import grounding_seed, synthetic_grounding
    from plumbing.checkpoint import load_checkpoint
    model, tokenizer, _ = load_checkpoint(run, use_teacher=use_teacher)
    model.eval()
    size, out = model.cfg.image_size, {}
    grid = lambda values: upsample_grid(values, size)   # noqa: E731
    for where, eval_seed in zip(("first set", "second set"), eval_seeds or (EVAL_SEED, SECOND_EVAL_SEED)):
        seed = grounding_seed(eval_seed)
        g = synthetic_grounding(n_per_class, size, seed)
        images = g["images"].float() / 255
        drawn, undrawn, masks, labels = drawn_and_undrawn(n_per_class, size, seed)
        assert torch.equal(drawn, images) and torch.equal(masks, g["masks"]), "set drawn differently"
        with torch.no_grad():
            mean = model.patch_vectors(images).mean(0)                   # the set's mean image
        maps = {"state change": lambda: grid(state_change(model, images, undrawn)),
                "pixel change": lambda: grid(F.avg_pool2d((images - undrawn).abs(),
                                                          model.cfg.patch_size).flatten(1))}
        for name, key in (("report", "texts"), ("no place", "unlocated")):
            text = embed_texts(model, tokenizer, g[key], "cpu")
            maps[f"share, {name}"] = lambda text=text: similarity_map(model, images, text)
            maps[f"contrast, {name}"] = lambda text=text: similarity_map(model, images, text, mean)
            maps[f"shifted contrast, {name}"] = lambda text=text: grid(
                shifted_shares(model, images, text, set_images=images, shifts=2))
        scores = {}
        with torch.no_grad():
            for name, make in maps.items():
                s = summarize(zip(labels, make(), masks))
                scores[name] = {"pointing_game": s["class_mean"]["pointing_game"],
                                "signed_cnr": s["class_mean"]["signed_cnr"],
                                "per_class": {c: v["pointing_game"] for c, v in s["per_class"].items()}}
        side = size // model.cfg.patch_size
        for name, g in (("grid", side), ("shifted grid", 2 * side)):
            best = grid_ceiling(labels, masks, g)                              # any map on the grid
            scores[f"{name} ceiling"] = {"pointing_game": best["class_mean"]["pointing_game"],
                                         "per_class": {c: v["pointing_game"] for c, v in best["per_class"].items()}}
            null = random_grid_null(labels, masks, g)["class_mean"]   # random maps on it
            scores[f"{name} random"] = {"pointing_game": null["pointing_game"], "signed_cnr": null["signed_cnr"]}
        out[where] = {"grounding_seed": seed, **scores}
    out["image_size"], out["patch_size"] = size, model.cfg.patch_size   # the grid the maps live on
    return out


TEACHER = ":teacher"   # a run's key in the JSON when its teacher was read

COLUMNS = [  # (set, map, metric, heading)
    ("first set", "state change", "pointing_game", "state change"),
    ("first set", "share, report", "pointing_game", "share map"),
    ("first set", "contrast, report", "pointing_game", "contrast map"),
    ("first set", "contrast, report", "signed_cnr", "signed CNR"),
    ("first set", "share, no place", "pointing_game", "share map, no place"),
    ("first set", "contrast, no place", "pointing_game", "contrast map, no place"),
    ("first set", "contrast, no place", "signed_cnr", "signed CNR, no place"),
    ("second set", "contrast, report", "pointing_game", "contrast map, 2nd set"),
    ("first set", "shifted contrast, report", "pointing_game", "shifted"),
    ("first set", "shifted contrast, report", "signed_cnr", "shifted sCNR"),
    ("first set", "shifted contrast, no place", "pointing_game", "shifted, no place"),
    ("second set", "shifted contrast, report", "pointing_game", "shifted, 2nd set"),
]


def table(results):
    """One row per try (a run folder's parent's name): mean ± sd over its seeds of COLUMNS (– where
    no seed measured it), then for each image and grid the pixel change (what a map that knew the
    drawing would score), random maps and the ceiling (a shifted column: the finer grid's)."""
    from experiments.studies import fmt_mean_std, groups_of, mean_std
    tries = {}
    for run, r in results.items():
        name = os.path.basename(os.path.dirname(os.path.normpath(run.removesuffix(TEACHER))))
        tries.setdefault(name + " teacher" * bool(r.get("teacher")), []).append(r)
    head = ["try", "seeds"] + [c[3] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for name, runs in tries.items():
        cells = [fmt_mean_std([r[w][m][k] for r in runs if m in r[w]]) for w, m, k, _ in COLUMNS]
        lines.append("| " + " | ".join([name, str(len(runs))] + cells) + " |")   # –: not measured
    # the references depend on the image and its grid: rows for each, named by its tries when the
    # runs have more than one; a shifted column's are those of the grid twice as fine
    grids = groups_of([(name, r) for name, runs in tries.items() for r in runs],
                      lambda name, r: (r["image_size"], r["image_size"] // r["patch_size"]))

    def reference(runs, what, metrics):   # the same for every run of a group: the first that has it
        cells = []
        for w, m, k, _ in COLUMNS:
            key = ("shifted grid " if m.startswith("shifted") else "grid ") + what
            found = [r[w][key][k] for r in runs if key in r[w] and k in metrics]
            cells.append(f"{found[0]:.3f}" if found else "")
        return " | ".join(cells)

    for (size, side), runs, who in grids:
        which = f" ({side}x{side} grid, shifted {2 * side}x{2 * side}; {size} px{', ' + who[2:] if who else ''})"
        pixel = mean_std([r["first set"]["pixel change"]["pointing_game"] for r in runs])[0]
        lines.append(f"| the pixels' own change{which} |  | {pixel:.3f} |" + " |" * (len(COLUMNS) - 1))
        lines.append(f"| random maps on the grid{which} |  | "
                     + reference(runs, "random", ("pointing_game", "signed_cnr")) + " |")
        lines.append(f"| the best any map on it can do{which} |  | "
                     + reference(runs, "ceiling", ("pointing_game",)) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="train.py output folders, or `report` for the table of --json")
    p.add_argument("--json", help="also write {run: measure(run)} here (runs already in it are kept)")
    p.add_argument("--teacher", action="store_true",
                   help=f"read the runs' EMA teachers (kept as RUN{TEACHER} in the JSON)")
    args = p.parse_args(argv)
    if args.runs == ["report"]:
        with open(args.json) as f:
            print(table(json.load(f)))
        return 0
    missing = [r for r in args.runs if not os.path.exists(os.path.join(r, "ckpt.pt"))]
    if missing:
        print(f"contrast_maps: error: no ckpt.pt in {', '.join(missing)}", file=sys.stderr)
        return 2
    results = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    from experiments.studies import commit, machine
    for run in args.runs:
        key = run + TEACHER * args.teacher
        results[key] = measure(run, use_teacher=args.teacher)
        for where in ("first set", "second set"):
            for name, s in results[key][where].items():
                if not isinstance(s, dict):
                    continue
                cnr = f"  signed CNR {s['signed_cnr']:.3f}" if "signed_cnr" in s else ""
                print(f"{key} {where} {name:18s} pointing game {s['pointing_game']:.3f}{cnr}", flush=True)
        results[key]["measured"] = {"commit": commit(), "machine": machine(),
                                    "date": datetime.date.today().isoformat()}
        results[key]["teacher"] = args.teacher
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
