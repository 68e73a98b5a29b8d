"""eval.py's figures: --show (zero-shot predictions) and --show-grounding (each grounding study's
contrast map of its sentence over its image, the true region outlined). Each picks a few items per
class from the set evaluate() used and hands them to tools/plot.py, which draws them with Pillow."""

import torch

from evaluation.protocols import grounding_maps, mean_patch_vectors, zero_shot
from evaluation.sets import GROUNDING_PER_CLASS, grounding_seed, synthetic_grounding, synthetic_zero_shot
from plumbing.checkpoint import InputError
from plumbing.runtime import WriteError, reason


def show_predictions(model, tokenizer, zs, args):
    """--show: four images per class, enough to see what the model confuses, with their true
    finding and top-3 predictions. zs None: the synthetic set evaluate() rendered, from the cache."""
    if zs is None:
        zs = synthetic_zero_shot(args.n_per_class, model.cfg.image_size, args.eval_seed)
    pick = torch.cat([torch.nonzero(zs["labels"] == c).flatten()[:4]
                      for c in range(len(zs["classes"]))])
    z = zero_shot(model, tokenizer, zs["images"][pick], zs["labels"][pick], zs["classes"],
                  zs["prompts"], args.device, args.batch_size, precision=args.precision)
    from tools.plot import draw_predictions   # Pillow: only --show needs it
    try:
        draw_predictions(args.show, zs["images"][pick], zs["labels"][pick], z["probs"], zs["classes"])
    except OSError as e:
        raise WriteError(f"cannot write {args.show}: {reason(e)}") from None
    print(f"wrote {args.show}")


def show_grounding(model, tokenizer, gr, args):
    """--show-grounding: three studies per class, each image with its true region and the contrast
    map of its sentence (its share of the score minus the whole set's mean score for that sentence,
    eval.json's "contrast"; a set of one item: the share map); where the set has sentences that name
    no place (the synthetic set), the same three studies again with those beside them. gr None: the
    synthetic set evaluate() rendered, from the cache."""
    if gr is False:
        raise InputError(f"--show-grounding {args.show_grounding} needs the synthetic set or "
                         f"--grounding-manifest")
    if gr is None:
        gr = synthetic_grounding(GROUNDING_PER_CLASS, model.cfg.image_size,
                                 grounding_seed(args.eval_seed))
    picks = [[j for j, name in enumerate(gr["labels"]) if name == c][:3]
             for c in dict.fromkeys(gr["labels"])]                # up to three studies per class
    sets = [gr["texts"]] + ([gr["unlocated"]] if "unlocated" in gr else [])
    # per class: its studies with the report's sentences, then with the unlocated ones
    order = [(texts, i) for pick in picks for texts in sets for i in pick]
    rows = [i for _, i in order]
    texts = [t[i] for t, i in order]
    mean = (mean_patch_vectors(model, gr["images"], args.device, args.batch_size, precision=args.precision)
            if len(gr["texts"]) > 1 else None)              # the whole set's, as eval.json's
    maps = grounding_maps(model, tokenizer, gr["images"][rows], texts, args.device, args.batch_size,
                          precision=args.precision, mean_vectors=mean)
    from tools.plot import draw_grounding   # Pillow: only --show-grounding needs it
    try:
        draw_grounding(args.show_grounding, gr["images"][rows], gr["masks"][rows], maps, texts,
                       [gr["labels"][i] for i in rows], per_class=3 * len(sets))
    except OSError as e:
        raise WriteError(f"cannot write {args.show_grounding}: {reason(e)}") from None
    print(f"wrote {args.show_grounding}")
