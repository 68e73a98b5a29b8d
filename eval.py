"""Evaluate a trained dual encoder the way medical vision-language papers report it.

    python eval.py --checkpoint out            # the synthetic benchmark, one table
    python eval.py --checkpoint out --json results.json --show grid.png

Three protocols (docs/method.md, "Evaluation"):

- Zero-shot classification (CLIP; CheXpert 5x200 in medical VLP papers such as ConVIRT, GLoRIA,
  MedCLIP): every class is described by a few prompts; a class embedding is the mean of its
  normalised prompt embeddings, renormalised; an image is assigned the class whose embedding is
  most similar. Reported as accuracy and macro one-vs-rest AUC-ROC.
- Few-shot adaptation: a linear probe (multinomial logistic regression) on frozen, L2-normalised
  image features, trained on k labelled images per class (k = 1, 2, 4, 8, 16), scored by macro
  AUC-ROC on every other image, averaged over several random draws of the k images.
- Retrieval: image-to-text and text-to-image Recall@1/5/10 on held-out pairs. Reports repeat
  (many normal studies share the same text), so any candidate whose report is identical to the
  query's counts as a correct match; otherwise the metric would punish the model for a coin flip
  between indistinguishable candidates.
- Phrase grounding: where a sentence lands in the image (grounding.py): pointing game, CNR and mIoU
  of patch-text similarity maps against each finding's region, per class.

Every number comes with a 95% confidence interval from a percentile bootstrap over the test items
(--bootstrap: 1000 seeded resamples, as CheXzero reports its results; 0 = none; metrics.py,
"Bootstrap"). It shows how far the number would move on another test set of the same size, so a
difference between two runs smaller than the intervals is not resolved by this test set, whatever
the training seeds say.

The scores are metrics.py's (torch, no scikit-learn, checked against hand computations); the
user's data is read by benchmark.py. train.py imports `evaluate` for its periodic quick zero-shot
check and its final report.
"""

import argparse
import functools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from evaluation.sets import (check_benchmark_options, read_benchmark, read_grounding,  # noqa: F401
                       read_prompts, unlabelled_prompt_classes)
from plumbing.checkpoint import InputError, load_checkpoint
from data import report_ids, tokenize
from manifests.read import ManifestError
from evaluation.grounding import similarity_map, summarize
from evaluation.metrics import (BOOTSTRAP_RESAMPLES, bootstrap_weights, ci95, few_shot_auc, few_shot_probes,
                     macro_auc_ovr, recall_hits, weighted_few_shot, weighted_macro_auc_ovr,
                     weighted_mean)
from plumbing.runtime import WriteError, check_output_file, pick_device, reason, write_text
from synthetic.dataset import (EVAL_SEED, GROUNDING_SEED, SECOND_EVAL_SEED, check_eval_seed, grounding_set,
                       retrieval_set, zero_shot_set)

# -----------------------------------------------------------------------------
# Embeddings: the frozen model as a feature extractor.


def _restore_mode(fn):
    """Run fn with the model in eval mode and under no_grad, then put the model back in the mode it
    was in: train.py calls the evaluation in the middle of training."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        model = getattr(model, "module", model)   # unwrap DistributedDataParallel
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


@_restore_mode
def embed_images(model, images, device, batch_size=256):
    """images (n, C, H, W), uint8 in [0, 255] (or float in [0, 1]) -> (n, D) float32 on the CPU,
    unit L2 norm. Batches of batch_size go to the device one at a time, so n can be large."""
    in_channels = getattr(getattr(model, "cfg", None), "in_channels", images.shape[1])
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()   # the model's input: [0, 1]
        if x.shape[1] == 1 and in_channels == 3:
            x = x.expand(-1, 3, -1, -1)   # grayscale benchmark images into an RGB-trained model
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@_restore_mode
def embed_texts(model, tokenizer, texts, device, batch_size=256):
    """texts: list of n strings -> (n, D) float32 on the CPU, unit L2 norm."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, _ = tokenize(tokenizer, texts[i:i + batch_size], model.cfg.context_length)  # (b, L)
        out.append(model.encode_text(ids.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


# -----------------------------------------------------------------------------
# The three protocols.


def class_embeddings(model, tokenizer, classes, prompts, device, batch_size=256):
    """A prompt ensemble per class (CLIP, section 3.1.4): the mean of the class's normalised prompt
    embeddings, renormalised. Averaging in embedding space smooths over the wording of any single
    prompt. Returns (C, D), row c for classes[c]."""
    flat, owner = [], []
    for c, name in enumerate(classes):
        if not prompts.get(name):
            raise ValueError(f"no prompts for class {name!r}")
        flat += list(prompts[name])
        owner += [c] * len(prompts[name])
    emb = embed_texts(model, tokenizer, flat, device, batch_size)               # (P, D)
    owner = torch.tensor(owner)
    means = torch.stack([emb[owner == c].mean(0) for c in range(len(classes))])  # (C, D)
    return F.normalize(means, dim=-1)


def zero_shot(model, tokenizer, images, labels, classes, prompts, device, batch_size=256,
              image_features=None):
    """Zero-shot classification: p(class c | image) = softmax_c(s * cos(image, class_c)) with the
    model's own inverse temperature s = exp(logit_scale). The argmax (accuracy) does not depend on
    s, the one-vs-rest AUC of the probabilities does, so we use the s the model was trained with.

    images (n, C, H, W), labels (n,) indices into classes, prompts {class: [prompt, ...]}.
    image_features (n, D) may be passed to skip the image encoder (evaluate reuses them for the
    few-shot probe). Returns {"accuracy", "auc", "probs" (n, C)}."""
    model = getattr(model, "module", model)   # unwrap DistributedDataParallel for logit_scale
    if image_features is None:
        image_features = embed_images(model, images, device, batch_size)       # (n, D)
    text = class_embeddings(model, tokenizer, classes, prompts, device, batch_size)  # (C, D)
    scale = float(model.logit_scale.detach().exp())
    probs = torch.softmax(scale * image_features @ text.T, dim=-1)            # (n, C)
    labels = torch.as_tensor(labels).long()
    return {"accuracy": (probs.argmax(dim=1) == labels).double().mean().item(),
            "auc": macro_auc_ovr(probs, labels),
            "probs": probs}


def retrieval(model, tokenizer, images, texts, device, batch_size=256, ks=(1, 5, 10), hits=False):
    """Image-to-text and text-to-image Recall@k over n held-out pairs (image i goes with texts[i]);
    a candidate whose normalised report equals the query's counts as correct (report_ids).
    Returns {"i2t_r1", ..., "t2i_r10"}; with hits=True, (that, the same keys' (n,) bool hit vectors
    query by query: row i is the query of pair i in either direction, for the bootstrap)."""
    img = embed_images(model, images, device, batch_size)          # (n, D)
    txt = embed_texts(model, tokenizer, texts, device, batch_size)  # (n, D)
    sim = img @ txt.T                                              # (n, n) cosine similarities
    ids = report_ids(texts)                                        # (n,)
    correct = ids[:, None] == ids[None, :]                         # (n, n) True on the diagonal too
    i2t = recall_hits(sim, correct, ks)
    t2i = recall_hits(sim.T, correct.T, ks)
    per_query = {**{f"i2t_r{k}": v for k, v in i2t.items()},
                 **{f"t2i_r{k}": v for k, v in t2i.items()}}
    recalls = {key: v.double().mean().item() for key, v in per_query.items()}
    return (recalls, per_query) if hits else recalls


# -----------------------------------------------------------------------------
# The whole benchmark, as train.py and the command line run it.

GROUNDING_PER_CLASS = 50   # synthetic grounding: 5 localised findings x 50 single-finding studies
QUICK_PER_CLASS = 50   # quick=True: 5 x 50 zero-shot images, about a second for the tiny model on a CPU


@functools.lru_cache(maxsize=4)
def _synthetic_zero_shot(n_per_class, image_size, seed=EVAL_SEED):
    # Rendering is deterministic, so a training run that evaluates every few hundred steps renders
    # the benchmark once, not at every evaluation.
    return zero_shot_set(n_per_class, image_size, seed=seed)


@functools.lru_cache(maxsize=4)
def _synthetic_retrieval(n, image_size, seed=EVAL_SEED):
    return retrieval_set(n, image_size, seed=seed)


def grounding_seed(eval_seed):
    """The synthetic grounding set that goes with an evaluation seed: GROUNDING_SEED with the
    first, eval_seed + 2002 with any other (5005 with the second), apart from every other set."""
    return GROUNDING_SEED if eval_seed == EVAL_SEED else eval_seed + 2002


@functools.lru_cache(maxsize=2)
def _synthetic_grounding(n_per_class, image_size, seed):
    return grounding_set(n_per_class, image_size, seed)


@_restore_mode
def grounding_maps(model, tokenizer, images, texts, device, batch_size=256):
    """Patch-text similarity maps (n, H, W) on the CPU of each image with its own sentence
    (grounding.similarity_map)."""
    text = embed_texts(model, tokenizer, texts, device, batch_size)              # (n, D)
    maps = []
    for i in range(0, len(texts), batch_size):
        x = images[i:i + batch_size].to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1 and model.cfg.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        maps.append(similarity_map(model, x, text[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(maps)


def evaluate_grounding(model, tokenizer, gr, device, batch_size=256):
    """Pointing game, CNR and mIoU (grounding.py) per class and overall, with the chance level of
    the pointing game beside them: a uniform random map's maximum lands in the mask with the
    probability of the mask's share of the image."""
    maps = grounding_maps(model, tokenizer, gr["images"], gr["texts"], device, batch_size)
    masks = gr["masks"]
    out = summarize(zip(gr["labels"], maps, masks))
    chance = {}
    for name, mask in zip(gr["labels"], masks):
        chance.setdefault(name, []).append(mask.float().mean().item())
    for name, shares in chance.items():
        out["per_class"][name]["chance_pointing_game"] = sum(shares) / len(shares)
    everything = [s for shares in chance.values() for s in shares]
    out["overall"]["chance_pointing_game"] = sum(everything) / len(everything)
    return out


def _seed_of(data):
    """{"seed": ...} for a synthetic set, {} for a manifest's."""
    return {"seed": data["seed"]} if "seed" in data else {}


def evaluate(model, tokenizer, device, image_size, zs=None, ret=None, n_per_class=200,
             n_retrieval=1000, quick=False, shots=(1, 2, 4, 8, 16), seeds=(0, 1, 2, 3, 4),
             batch_size=256, log=None, eval_seed=EVAL_SEED, bootstrap=BOOTSTRAP_RESAMPLES,
             bootstrap_seed=0, gr=None, n_grounding=GROUNDING_PER_CLASS):
    """Run the benchmark and return the results as eval.py --json writes them:
        {"zero_shot": {"accuracy", "auc"}, "few_shot": {"1", "2", "4", "8", "16"},
         "retrieval": {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"},
         "ci95": {"zero_shot": {"accuracy": [lo, hi], "auc": [lo, hi]}, "few_shot": {"1": [lo, hi],
                  ...}, "retrieval": {"i2t_r1": [lo, hi], ...}, "resamples": R, "seed": seed},
         "evaluated_on": ...}

    zs: {"images", "labels", "classes", "prompts"} for zero-shot and few-shot (the output of
    synthetic.zero_shot_set or a class manifest); ret: {"images", "texts"} for retrieval. None renders
    the synthetic set (n_per_class images per class, n_retrieval pairs); False skips that part.
    quick=True runs zero-shot alone, on 5 x QUICK_PER_CLASS synthetic images unless zs is given, or
    retrieval alone when zs is False, and no interval (train.py's periodic check stays fast).
    A k-shot entry is left out when some class has k images or fewer (a small manifest).
    results["evaluated_on"] says which data each part used: {"zero_shot": {"source", "images",
    "classes"}, "retrieval": {"source", "pairs"}}, source "synthetic" or the manifest's path (a set
    from read_benchmark carries it as zs["source"] / ret["source"]).
    log: a print-like function for progress messages (None: silent).
    eval_seed: which synthetic evaluation set (synthetic.EVAL_SEED; SECOND_EVAL_SEED is disjoint).

    results["ci95"]: the 95% percentile-bootstrap interval of every number (metrics.py,
    "Bootstrap"), from `bootstrap` resamples (0: none, and no "ci95" key) drawn with bootstrap_seed.
    What is resampled is the test items, with the model and its embeddings fixed: the zero-shot
    images (one draw of them for accuracy, AUC and every few-shot k), and the retrieval pairs (one
    draw for both directions: the queries are resampled, each still ranks the whole gallery of n
    candidates). The few-shot probes are NOT refit per resample: each seed's probe stays as fitted,
    its test images are resampled (the same draw for every seed) and the macro AUCs are averaged
    over the seeds per resample. So the interval is the test-set noise alone, not that of drawing
    the k training images, which the seeds average over."""
    log = log or (lambda *args: None)
    results, evaluated_on, intervals = {}, {}, {}
    if zs is not False:
        if zs is None:
            n = min(n_per_class, QUICK_PER_CLASS) if quick else n_per_class
            log(f"rendering the synthetic zero-shot set ({n} images per class)...")
            zs = {**_synthetic_zero_shot(n, image_size, eval_seed), "source": "synthetic",
                  "seed": eval_seed}
        evaluated_on["zero_shot"] = {"source": zs.get("source"), "images": len(zs["labels"]),
                                     "classes": list(zs["classes"]), **_seed_of(zs)}
        log(f"evaluating zero-shot on {len(zs['labels'])} images, {len(zs['classes'])} classes...")
        features = embed_images(model, zs["images"], device, batch_size)               # (n, D)
        z = zero_shot(model, tokenizer, zs["images"], zs["labels"], zs["classes"], zs["prompts"],
                      device, batch_size, image_features=features)
        results["zero_shot"] = {"accuracy": z["accuracy"], "auc": z["auc"]}
        if quick:
            return {**results, "evaluated_on": evaluated_on}
        # k-shot needs k training images per class and at least one more to test on.
        counts = torch.bincount(torch.as_tensor(zs["labels"]))
        smallest = int(counts[counts > 0].min())
        feasible = [k for k in shots if k < smallest]
        if len(feasible) < len(shots):
            log(f"skipping {[k for k in shots if k >= smallest]}-shot: the smallest class has "
                f"only {smallest} images")
        log(f"evaluating few-shot linear probes (k = {feasible}, {len(seeds)} seeds each)...")
        probes = few_shot_probes(features, zs["labels"], feasible, seeds)
        results["few_shot"] = few_shot_auc(probes)
        if bootstrap:
            labels = torch.as_tensor(zs["labels"]).long()
            W = bootstrap_weights(len(labels), bootstrap, bootstrap_seed)              # (R, n)
            hits = z["probs"].argmax(dim=1) == labels
            intervals["zero_shot"] = {"accuracy": ci95(weighted_mean(hits, W)),
                                      "auc": ci95(weighted_macro_auc_ovr(z["probs"], labels, W))}
            intervals["few_shot"] = {k: ci95(v) for k, v in weighted_few_shot(probes, W).items()}
    if ret is not False:
        if ret is None:
            log(f"rendering {n_retrieval} held-out synthetic image-report pairs...")
            ret = {**_synthetic_retrieval(n_retrieval, image_size, eval_seed), "source": "synthetic",
                   "seed": eval_seed}
        evaluated_on["retrieval"] = {"source": ret.get("source"), "pairs": len(ret["texts"]),
                                     **_seed_of(ret)}
        log(f"evaluating retrieval on {len(ret['texts'])} pairs "
            f"({len(set(report_ids(ret['texts']).tolist()))} distinct reports)...")
        results["retrieval"], per_query = retrieval(model, tokenizer, ret["images"], ret["texts"],
                                                    device, batch_size, hits=True)
        if bootstrap and not quick:
            W = bootstrap_weights(len(ret["texts"]), bootstrap, bootstrap_seed)        # (R, n)
            intervals["retrieval"] = {key: ci95(weighted_mean(h, W)) for key, h in per_query.items()}
    if gr is not False and not quick:
        if gr is None:
            seed = grounding_seed(eval_seed)
            log(f"rendering the synthetic grounding set ({n_grounding} studies per finding)...")
            gr = {**_synthetic_grounding(n_grounding, image_size, seed), "source": "synthetic"}
        evaluated_on["grounding"] = {"source": gr.get("source"), "phrases": len(gr["texts"]),
                                     **_seed_of(gr)}
        log(f"evaluating grounding on {len(gr['texts'])} phrases...")
        results["grounding"] = evaluate_grounding(model, tokenizer, gr, device, batch_size)
    if intervals:
        results["ci95"] = {**intervals, "resamples": bootstrap, "seed": bootstrap_seed}
    return {**results, "evaluated_on": evaluated_on}


def format_table(results):
    """One plain-text table of evaluate()'s results, a metric per row, with its 95% bootstrap
    interval beside it when results has "ci95"."""
    ci = results.get("ci95", {})
    rows = []   # (task, metric, value, [lo, hi] or None)
    if "zero_shot" in results:
        rows.append(("zero-shot", "accuracy", results["zero_shot"]["accuracy"],
                     ci.get("zero_shot", {}).get("accuracy")))
        rows.append(("zero-shot", "AUC-ROC (macro one-vs-rest)", results["zero_shot"]["auc"],
                     ci.get("zero_shot", {}).get("auc")))
    for k, auc in results.get("few_shot", {}).items():
        rows.append(("few-shot", f"AUC-ROC, linear probe, {k}-shot", auc,
                     ci.get("few_shot", {}).get(k)))
    direction = {"i2t": "image -> text", "t2i": "text -> image"}
    for key, recall in results.get("retrieval", {}).items():
        way, k = key.split("_r")
        rows.append(("retrieval", f"{direction[way]} Recall@{k}", recall,
                     ci.get("retrieval", {}).get(key)))
    g = results.get("grounding")
    if g:
        for metric, name in (("pointing_game", "pointing game"), ("cnr", "CNR"), ("miou", "mIoU")):
            rows.append(("grounding", f"{name}, mean of {len(g['per_class'])} classes",
                         g["class_mean"][metric], None))
        rows.append(("grounding", "pointing game of a random map", sum(
            c["chance_pointing_game"] for c in g["per_class"].values()) / len(g["per_class"]), None))
    width = max([len(row[1]) for row in rows] + [6])
    with_ci = any(row[3] is not None for row in rows)
    head = f"{'task':<10}  {'metric':<{width}}  {'value':>6}" + ("  95% CI" if with_ci else "")
    lines = [head, "-" * (10 + width + 10 + (18 if with_ci else 0))]
    for task, metric, value, interval in rows:
        line = f"{task:<10}  {metric:<{width}}  {value:6.3f}"
        if interval is not None:
            line += f"  [{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(line)
    if with_ci:
        note = "; few-shot probes not refit" if "few_shot" in ci else ""
        lines.append(f"95% CI: percentile bootstrap, {ci['resamples']} resamples of the test items "
                     f"(seed {ci['seed']}){note}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Command line.


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Zero-shot, few-shot and retrieval evaluation of a train.py checkpoint. "
                    "With no manifest it runs the synthetic benchmark: 5 x 200 zero-shot images "
                    "and 1000 held-out retrieval pairs, about 15 s for the tiny model on 2 CPU "
                    "cores. With a manifest, the parts that have none are skipped.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="train.py's output folder, or its ckpt.pt (tokenizer.json beside it)")
    p.add_argument("--use-teacher", action="store_true",
                   help="evaluate the EMA teacher's weights instead of the student's")
    p.add_argument("--eval-manifest", metavar="CSV",
                   help="zero-shot and few-shot on real images: a CSV with columns image,label")
    p.add_argument("--prompts", metavar="JSON",
                   help='class prompts for --eval-manifest: {"class": ["prompt", ...], ...}')
    p.add_argument("--retrieval-manifest", metavar="CSV",
                   help="retrieval on real pairs: a CSV with columns image,text (and, if it has a "
                        "split column, only its 'test' rows are used)")
    p.add_argument("--data-cache", default="data_cache", metavar="DIR",
                   help="folder for decoded manifests, memory-mapped at the next run ('' = none: "
                        "decode into memory; default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument("--show", metavar="PNG",
                   help="draw zero-shot images with their true finding and top-3 predictions")
    p.add_argument("--show-grounding", metavar="PNG",
                   help="draw grounding studies: the image, the true region (green) and the "
                        "similarity map of its sentence over it")
    p.add_argument("--grounding-manifest", metavar="CSV",
                   help="phrase grounding on real images: a CSV with columns image,text,x,y,w,h "
                        "(a box in the image's pixels) and optionally label (docs/grounding.md)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda, else mps, else cpu), or cpu, cuda, cuda:1, mps (default: "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="images or texts per forward pass (default: %(default)s)")
    p.add_argument("--n-per-class", type=int, default=200, metavar="N",
                   help="synthetic zero-shot images per class (default: %(default)s, as CheXpert "
                        "5x200)")
    p.add_argument("--n-retrieval", type=int, default=1000, metavar="N",
                   help="synthetic held-out retrieval pairs (default: %(default)s)")
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED, metavar="SEED",
                   help=f"which synthetic evaluation set to render (default: %(default)s, the one "
                        f"train.py reports; {SECOND_EVAL_SEED} is a second, disjoint one, to check "
                        f"that a recipe is not tuned to the first)")
    p.add_argument("--seeds", type=int, default=5, metavar="N",
                   help="few-shot draws of the k images, averaged (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_RESAMPLES, metavar="N",
                   help="bootstrap resamples of the test items for each metric's 95%% confidence "
                        "interval (default: %(default)s, as CheXzero; 0 = no intervals)")
    return p.parse_args(argv)


def run(args):
    t0 = time.time()
    # Check every path before any slow work, so a typo fails in a second.
    prompts = check_benchmark_options(args.eval_manifest, args.prompts, args.retrieval_manifest,
                                      args.grounding_manifest)
    if args.show and args.retrieval_manifest and not args.eval_manifest:
        raise InputError(f"--show {args.show} draws zero-shot predictions: it needs the synthetic "
                         f"set or --eval-manifest")
    for flag in ("batch_size", "n_per_class", "n_retrieval", "seeds"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be 0 (no intervals) or more, got {args.bootstrap}")
    try:
        check_eval_seed(args.eval_seed)
    except ValueError as e:
        raise InputError(f"--eval-seed: {e}") from None

    for flag in ("json", "show", "show_grounding"):
        if getattr(args, flag):
            check_output_file(f"--{flag.replace('_', '-')}", getattr(args, flag))
    try:
        args.device = pick_device(args.device)
    except ValueError as e:
        raise InputError(f"--device {e}") from None
    model, tokenizer, ckpt = load_checkpoint(args.checkpoint, args.use_teacher, args.device)
    cfg = model.cfg
    print(f"loaded the {'teacher' if args.use_teacher else 'student'} of {args.checkpoint} "
          f"(step {ckpt.get('step', '?')}, {model.num_params() / 1e6:.2f}M parameters, "
          f"{cfg.image_size}px) on {args.device}")

    zs, ret = read_benchmark(args.eval_manifest, prompts, args.retrieval_manifest, cfg.image_size,
                             cfg.in_channels, cache_dir=args.data_cache or None)
    if args.grounding_manifest and zs is None and ret is None:
        zs = ret = False             # real data replaces the synthetic benchmark: grounding alone
    gr = read_grounding(args.grounding_manifest, cfg.image_size, cfg.in_channels,
                        others=zs is not None or ret is not None)
    results = evaluate(model, tokenizer, args.device, cfg.image_size, zs=zs, ret=ret,
                       n_per_class=args.n_per_class, n_retrieval=args.n_retrieval,
                       seeds=tuple(range(args.seeds)), batch_size=args.batch_size, log=print,
                       eval_seed=args.eval_seed, bootstrap=args.bootstrap, gr=gr)
    print()
    print(format_table(results))
    print(f"\n({time.time() - t0:.0f} s)")

    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    if args.show:
        if zs is None:   # evaluate rendered the synthetic set; the cache hands back the same one
            zs = _synthetic_zero_shot(args.n_per_class, cfg.image_size, args.eval_seed)
        # Four images per class are enough to see what the model confuses; embed just those.
        pick = torch.cat([torch.nonzero(zs["labels"] == c).flatten()[:4]
                          for c in range(len(zs["classes"]))])
        z = zero_shot(model, tokenizer, zs["images"][pick], zs["labels"][pick], zs["classes"],
                      zs["prompts"], args.device, args.batch_size)
        from tools.plot import draw_predictions   # Pillow: only --show needs it
        try:
            draw_predictions(args.show, zs["images"][pick], zs["labels"][pick], z["probs"],
                             zs["classes"])
        except OSError as e:
            raise WriteError(f"cannot write {args.show}: {reason(e)}") from None
        print(f"wrote {args.show}")
    if args.show_grounding:
        if gr is False:
            raise InputError(f"--show-grounding {args.show_grounding} needs the synthetic set or "
                             f"--grounding-manifest")
        if gr is None:   # the set evaluate() rendered, from the cache
            gr = _synthetic_grounding(GROUNDING_PER_CLASS, cfg.image_size, grounding_seed(args.eval_seed))
        pick = [i for c in dict.fromkeys(gr["labels"])
                for i in [j for j, name in enumerate(gr["labels"]) if name == c][:3]]
        maps = grounding_maps(model, tokenizer, gr["images"][pick], [gr["texts"][i] for i in pick],
                              args.device, args.batch_size)
        from tools.plot import draw_grounding   # Pillow: only --show-grounding needs it
        try:
            draw_grounding(args.show_grounding, gr["images"][pick], gr["masks"][pick], maps,
                           [gr["texts"][i] for i in pick], [gr["labels"][i] for i in pick])
        except OSError as e:
            raise WriteError(f"cannot write {args.show_grounding}: {reason(e)}") from None
        print(f"wrote {args.show_grounding}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (InputError, ManifestError) as e:
        # The user's input is wrong, not the code: one line naming the culprit, exit status 2
        # (argparse's convention for usage errors).
        print(f"eval.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except WriteError as e:   # the disk or a permission, found while writing: one line, status 1
        print(f"eval.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
