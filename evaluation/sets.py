"""The data eval.evaluate() runs on: the synthetic benchmark's sets, or the user's.

The user's evaluation data is read and checked before any slow work: class prompts, a class
manifest for zero-shot and few-shot, a pair manifest for retrieval, a grounding manifest for phrase
grounding. eval.py and train.py both read their --eval-manifest, --prompts, --retrieval-manifest
and --grounding-manifest here, so the two refuse the same mistakes with the same line.

Real data replaces the synthetic benchmark: when any manifest is given, the parts without one are
skipped (False) rather than mixing real and synthetic numbers in one table.
"""

import functools
import json
import os

from evaluation.grounding import text_prior
from manifests.grounding import read_grounding_manifest
from manifests.read import read_class_manifest, read_pair_manifest
from plumbing.runtime import InputError
from synthetic.dataset import EVAL_SEED, GROUNDING_SEED, grounding_set, retrieval_set, zero_shot_set

# -----------------------------------------------------------------------------
# The synthetic benchmark. Rendering is deterministic, so the sets are cached: a training run that
# evaluates every few hundred steps renders the benchmark once, not at every evaluation.

GROUNDING_PER_CLASS = 50   # synthetic grounding: 5 localised findings x 50 single-finding studies


@functools.lru_cache(maxsize=4)
def synthetic_zero_shot(n_per_class, image_size, seed=EVAL_SEED):
    """synthetic.zero_shot_set, cached."""
    return zero_shot_set(n_per_class, image_size, seed=seed)


@functools.lru_cache(maxsize=4)
def synthetic_retrieval(n, image_size, seed=EVAL_SEED):
    """synthetic.retrieval_set, cached."""
    return retrieval_set(n, image_size, seed=seed)


def grounding_seed(eval_seed):
    """The synthetic grounding set that goes with an evaluation seed: GROUNDING_SEED with the
    first, eval_seed + 2002 with any other (5005 with the second), apart from every other set."""
    return GROUNDING_SEED if eval_seed == EVAL_SEED else eval_seed + 2002


# The text prior's reference studies: the grounding seed + PRIOR_OFFSET, as many as are scored.
PRIOR_OFFSET = 500


@functools.lru_cache(maxsize=2)
def synthetic_grounding(n_per_class, image_size, seed):
    """synthetic.grounding_set, cached, with the maps of a prior that reads only the sentence
    (evaluation.grounding.text_prior) for both of its sentence sets: "prior" for the report's
    sentences (the mean region of the sentence's class, side and zone), "prior_unlocated" for the
    finding alone (of its class), from other studies (seed + PRIOR_OFFSET, "prior_seed")."""
    gr = grounding_set(n_per_class, image_size, seed)
    ref = grounding_set(n_per_class, image_size, seed + PRIOR_OFFSET)
    prior = text_prior(gr["places"], ref["places"], ref["masks"])
    unlocated = text_prior([(name,) for name in gr["labels"]], ref["places"], ref["masks"])
    return {**gr, "prior": prior, "prior_unlocated": unlocated, "prior_seed": seed + PRIOR_OFFSET}


# -----------------------------------------------------------------------------
# The user's data


def read_prompts(path):
    """--prompts: {"class name": ["prompt", ...], ...}, class order as in the file."""
    if not os.path.isfile(path):
        raise InputError(f"prompt file not found: {path}")
    try:
        with open(path) as f:
            prompts = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}")
    if (not isinstance(prompts, dict) or len(prompts) < 2
            or not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v)
                       for v in prompts.values())):
        raise InputError(f'{path} must map at least two class names to lists of prompts, '
                         f'like {{"Edema": ["pulmonary edema", ...], ...}}')
    return prompts


def unlabelled_prompt_classes(prompt_classes, label_names):
    """The prompt classes that no training pair is labelled with (names compared without case, as
    manifests compare them). Zero-shot on such a class tests transfer to a finding the labels never
    name: worth knowing, not wrong."""
    seen = {name.lower() for name in label_names}
    return [c for c in prompt_classes if c.lower() not in seen]


def check_benchmark_options(eval_manifest, prompts, retrieval_manifest, grounding_manifest=None,
                            prompts_for="--eval-manifest"):
    """The options naming the user's evaluation data (eval.py's and train.py's), checked before any
    slow work so that a typo fails in a second; prompts_for: the options --prompts goes with.
    Returns the prompts read from the file, or None."""
    if eval_manifest and not prompts:
        raise InputError(f"--eval-manifest {eval_manifest} needs --prompts JSON "
                         f"(the class prompts for zero-shot)")
    if prompts and not eval_manifest:
        raise InputError(f"--prompts {prompts} is only used with {prompts_for}")
    for flag, path in (("--eval-manifest", eval_manifest), ("--retrieval-manifest", retrieval_manifest),
                       ("--grounding-manifest", grounding_manifest)):
        if path and not os.path.isfile(path):
            raise InputError(f"{flag} file not found: {path}")
    return read_prompts(prompts) if prompts else None


def read_benchmark(eval_manifest, prompts, retrieval_manifest, image_size, channels, cache_dir=None,
                   log=print):
    """(zs, ret) for evaluate() from the user's manifests, prompts as check_benchmark_options
    returns them. Real data replaces the synthetic benchmark: when one manifest is given, the part
    without one is False (skipped) rather than mixing real and synthetic numbers in one table. With
    neither, both are None: the synthetic benchmark. cache_dir: where the manifests' decoded images
    are kept (manifest.read_pair_manifest; None decodes into memory). Raises InputError or ManifestError."""
    if not (eval_manifest or retrieval_manifest):
        return None, None
    zs, ret = False, False
    if eval_manifest:
        log(f"reading {eval_manifest}...")
        m = read_class_manifest(eval_manifest, image_size, list(prompts), channels, cache_dir=cache_dir,
                                log=log)
        if len(set(m["labels"].tolist())) < 2:
            raise InputError(f"{eval_manifest}: AUC-ROC needs images of at least two classes")
        zs = {"images": m["images"], "labels": m["labels"], "classes": list(prompts),
              "prompts": prompts, "source": eval_manifest}
    if retrieval_manifest:
        log(f"reading {retrieval_manifest}...")
        m = read_pair_manifest(retrieval_manifest, image_size, channels, cache_dir=cache_dir, log=log)
        keep = list(range(len(m["texts"])))
        # Pairs the model trained on would flatter it: with a split column, the test rows only.
        if m["splits"] is not None and "test" in m["splits"]:
            keep = [i for i, split in enumerate(m["splits"]) if split == "test"]
            log(f"using the {len(keep)} of {len(m['texts'])} pairs with split=test")
        ret = {"images": m["images"][keep], "texts": [m["texts"][i] for i in keep],
               "source": retrieval_manifest}
    return zs, ret


def read_grounding(grounding_manifest, image_size, channels, others=False, log=print):
    """evaluate()'s `gr` for a --grounding-manifest: one entry per phrase, its image, mask, text and
    class ("all" where the manifest has no label column). Without the option, the synthetic
    grounding set (None) unless other manifests replace the synthetic benchmark (`others`: then
    False, skipped, as read_benchmark does). Raises ManifestError naming the row and column."""
    if not grounding_manifest:
        return False if others else None
    log(f"reading {grounding_manifest}...")
    m = read_grounding_manifest(grounding_manifest, image_size, channels, log=log)
    if not m["texts"]:
        raise InputError(f"{grounding_manifest}: no phrase left to evaluate (every box was outside "
                         f"the centre crop)")
    return {"images": m["images"][m["image_index"]], "masks": m["masks"], "texts": m["texts"],
            "labels": [label or "all" for label in m["labels"]], "source": grounding_manifest}
