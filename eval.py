"""Evaluate a trained dual encoder the way medical vision-language papers report it.

    python eval.py --checkpoint out            # the synthetic benchmark, one table
    python eval.py --checkpoint out --json results.json --show grid.png
    python eval.py --checkpoint out --image x.png --classes "pleural effusion,pneumothorax,no finding"

Four protocols (docs/method.md, "Evaluation"):

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
- Phrase grounding: where a sentence lands in the image (grounding.py): pointing game, CNR, signed
  CNR and mIoU against the finding's region, per class, of each patch's share of the image-text
  score and of its contrast map (the score minus the set's mean for that sentence), beside random
  grid maps, the best any grid map can do, and (synthetic set) a prior that reads only the sentence.

Every number comes with a 95% confidence interval from a percentile bootstrap over the test items
(--bootstrap: 1000 seeded resamples, as CheXzero reports its results; 0 = none; metrics.py,
"Bootstrap"). It shows how far the number would move on another test set of the same size, so a
difference between two runs smaller than the intervals is not resolved by this test set, whatever
the training seeds say.

The embeddings and the protocols are evaluation/protocols.py's, the scores evaluation/metrics.py's
(torch, no scikit-learn, checked against hand computations), and the data (the synthetic sets, or
the user's manifests) evaluation/sets.py's; this file composes them into evaluate() and the command
line. train.py imports `evaluate` for its periodic quick zero-shot check and its final report.
With --image none of it runs: evaluation/predict.py answers about the user's own images.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass

import torch

from data import report_ids
from evaluation.metrics import (BOOTSTRAP_RESAMPLES, bootstrap_weights, ci95, few_shot_auc,
                                few_shot_probes, weighted_few_shot, weighted_macro_auc_ovr,
                                weighted_mean)
from evaluation.figures import show_grounding, show_predictions
from evaluation.predict import BENCHMARK_OPTIONS, answer, check_image_options
from evaluation.protocols import embed_images, evaluate_grounding, retrieval, zero_shot
from evaluation.sets import (GROUNDING_PER_CLASS, check_benchmark_options, grounding_seed,
                             read_benchmark, read_grounding, synthetic_grounding, synthetic_retrieval,
                             synthetic_zero_shot)
from manifests.read import ManifestError
from plumbing.checkpoint import InputError, load_checkpoint
from plumbing.runtime import (WriteError, check_output_file, pick_device, precision_reason,
                              resolve_precision, write_text)
from synthetic.dataset import EVAL_SEED, SECOND_EVAL_SEED, check_eval_seed

# -----------------------------------------------------------------------------
# The whole benchmark, as train.py and the command line run it.

QUICK_PER_CLASS = 50   # quick=True: 5 x 50 zero-shot images, about a second for the tiny model on a CPU


@dataclass(frozen=True)
class EvalSettings:
    """How evaluate() measures, apart from the data it is given.

    n_per_class, n_retrieval, n_grounding: the sizes of the synthetic sets it renders where no data
    is given (zero-shot images per class, retrieval pairs, grounding studies per finding).
    eval_seed: which synthetic evaluation set (synthetic.EVAL_SEED; SECOND_EVAL_SEED is disjoint).
    shots, seeds: the few-shot k's and the random draws of the k images averaged for each.
    bootstrap, bootstrap_seed: resamples of the 95% intervals (0: no intervals) and their seed.
    batch_size: images or texts per forward pass. precision: "fp32", or "bf16"/"fp16" autocast for
    the model's forward passes (eval.py's --precision auto chooses as train.py does)."""
    n_per_class: int = 200
    n_retrieval: int = 1000
    n_grounding: int = GROUNDING_PER_CLASS
    eval_seed: int = EVAL_SEED
    shots: tuple = (1, 2, 4, 8, 16)
    seeds: tuple = (0, 1, 2, 3, 4)
    bootstrap: int = BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = 0
    batch_size: int = 256
    precision: str = "fp32"


def _provenance(data, **counts):
    """evaluated_on's entry for one set: its source, its counts, and its seed when synthetic."""
    return {"source": data.get("source"), **counts, **({"seed": data["seed"]} if "seed" in data else {})}


def _zero_shot_set(zs, image_size, settings, quick, log):
    """zs, or where it is None the synthetic zero-shot set (QUICK_PER_CLASS per class when quick)."""
    if zs is not None:
        return zs
    n = min(settings.n_per_class, QUICK_PER_CLASS) if quick else settings.n_per_class
    log(f"rendering the synthetic zero-shot set ({n} images per class)...")
    return {**synthetic_zero_shot(n, image_size, settings.eval_seed), "source": "synthetic",
            "seed": settings.eval_seed}


def _retrieval_set(ret, image_size, settings, log):
    """ret, or where it is None the synthetic held-out pairs."""
    if ret is not None:
        return ret
    log(f"rendering {settings.n_retrieval} held-out synthetic image-report pairs...")
    return {**synthetic_retrieval(settings.n_retrieval, image_size, settings.eval_seed),
            "source": "synthetic", "seed": settings.eval_seed}


def _grounding_set(gr, image_size, settings, log):
    """gr, or where it is None the synthetic grounding set that goes with the evaluation seed."""
    if gr is not None:
        return gr
    log(f"rendering the synthetic grounding set ({settings.n_grounding} studies per finding)...")
    return {**synthetic_grounding(settings.n_grounding, image_size, grounding_seed(settings.eval_seed)),
            "source": "synthetic"}


def _few_shot(features, labels, settings, log):
    """The few-shot probes (metrics.few_shot_probes) for every k that leaves each class at least
    one test image: k-shot needs k training images per class and one more to test on."""
    counts = torch.bincount(torch.as_tensor(labels))
    smallest = int(counts[counts > 0].min())
    feasible = [k for k in settings.shots if k < smallest]
    if len(feasible) < len(settings.shots):
        log(f"skipping {[k for k in settings.shots if k >= smallest]}-shot: the smallest class has "
            f"only {smallest} images")
    log(f"evaluating few-shot linear probes (k = {feasible}, {len(settings.seeds)} seeds each)...")
    return few_shot_probes(features, labels, feasible, settings.seeds)


def _zero_shot_intervals(probs, labels, probes, settings):
    """The bootstrap of the zero-shot images: one draw of them for accuracy, AUC and every k."""
    labels = torch.as_tensor(labels).long()
    W = bootstrap_weights(len(labels), settings.bootstrap, settings.bootstrap_seed)   # (R, n)
    hits = probs.argmax(dim=1) == labels
    return {"zero_shot": {"accuracy": ci95(weighted_mean(hits, W)),
                          "auc": ci95(weighted_macro_auc_ovr(probs, labels, W))},
            "few_shot": {k: ci95(v) for k, v in weighted_few_shot(probes, W).items()}}


def _retrieval_intervals(per_query, n, settings):
    """The bootstrap of the n retrieval pairs: one draw of the queries for both directions."""
    W = bootstrap_weights(n, settings.bootstrap, settings.bootstrap_seed)             # (R, n)
    return {key: ci95(weighted_mean(h, W)) for key, h in per_query.items()}


def evaluate(model, tokenizer, device, image_size, zs=None, ret=None, gr=None, quick=False,
             settings=EvalSettings(), log=None):
    """Run the benchmark and return the results as eval.py --json writes them:
        {"zero_shot": {"accuracy", "auc"}, "few_shot": {"1", "2", "4", "8", "16"},
         "retrieval": {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"},
         "grounding": evaluation.protocols.evaluate_grounding's,
         "ci95": {"zero_shot": {"accuracy": [lo, hi], "auc": [lo, hi]}, "few_shot": {"1": [lo, hi],
                  ...}, "retrieval": {"i2t_r1": [lo, hi], ...}, "resamples": R, "seed": seed},
         "evaluated_on": ...}

    zs: {"images", "labels", "classes", "prompts"} for zero-shot and few-shot (the output of
    synthetic.zero_shot_set or a class manifest); ret: {"images", "texts"} for retrieval; gr:
    {"images", "texts", "masks", "labels"} for grounding. None renders the synthetic set (of
    settings' sizes), False skips that part.
    quick=True runs zero-shot alone, on 5 x QUICK_PER_CLASS synthetic images unless zs is given, or
    retrieval alone when zs is False, and no interval (train.py's periodic check stays fast).
    A k-shot entry is left out when some class has k images or fewer (a small manifest).
    results["evaluated_on"] says which data each part used: {"zero_shot": {"source", "images",
    "classes"}, "retrieval": {"source", "pairs"}, "grounding": {"source", "phrases"}}, source
    "synthetic" (with its "seed") or the manifest's path (a set from evaluation.sets carries it as
    its "source").
    settings: an EvalSettings. log: a print-like function for progress messages (None: silent).

    results["ci95"]: the 95% percentile-bootstrap interval of every number (metrics.py,
    "Bootstrap"), from settings.bootstrap resamples (0: none, and no "ci95" key) drawn with
    settings.bootstrap_seed. What is resampled is the test items, with the model and its embeddings
    fixed: the zero-shot images (one draw of them for accuracy, AUC and every few-shot k), and the
    retrieval pairs (one draw for both directions: the queries are resampled, each still ranks the
    whole gallery of n candidates). The few-shot probes are NOT refit per resample: each seed's
    probe stays as fitted, its test images are resampled (the same draw for every seed) and the
    macro AUCs are averaged over the seeds per resample. So the interval is the test-set noise
    alone, not that of drawing the k training images, which the seeds average over."""
    log = log or (lambda *args: None)
    s = settings
    results, evaluated_on, intervals = {}, {}, {}
    if zs is not False:
        zs = _zero_shot_set(zs, image_size, s, quick, log)
        evaluated_on["zero_shot"] = _provenance(zs, images=len(zs["labels"]),
                                                classes=list(zs["classes"]))
        log(f"evaluating zero-shot on {len(zs['labels'])} images, {len(zs['classes'])} classes...")
        features = embed_images(model, zs["images"], device, s.batch_size, precision=s.precision)
        z = zero_shot(model, tokenizer, zs["images"], zs["labels"], zs["classes"], zs["prompts"],
                      device, s.batch_size, image_features=features, precision=s.precision)
        results["zero_shot"] = {"accuracy": z["accuracy"], "auc": z["auc"]}
        if quick:
            return {**results, "evaluated_on": evaluated_on}
        probes = _few_shot(features, zs["labels"], s, log)
        results["few_shot"] = few_shot_auc(probes)
        if s.bootstrap:
            intervals.update(_zero_shot_intervals(z["probs"], zs["labels"], probes, s))
    if ret is not False:
        ret = _retrieval_set(ret, image_size, s, log)
        evaluated_on["retrieval"] = _provenance(ret, pairs=len(ret["texts"]))
        log(f"evaluating retrieval on {len(ret['texts'])} pairs "
            f"({len(set(report_ids(ret['texts']).tolist()))} distinct reports)...")
        results["retrieval"], per_query = retrieval(model, tokenizer, ret["images"], ret["texts"],
                                                    device, s.batch_size, hits=True,
                                                    precision=s.precision)
        if s.bootstrap and not quick:
            intervals["retrieval"] = _retrieval_intervals(per_query, len(ret["texts"]), s)
    if gr is not False and not quick:
        gr = _grounding_set(gr, image_size, s, log)
        evaluated_on["grounding"] = _provenance(gr, phrases=len(gr["texts"]))
        log(f"evaluating grounding on {len(gr['texts'])} phrases...")
        results["grounding"] = evaluate_grounding(model, tokenizer, gr, device, s.batch_size,
                                                  precision=s.precision)
    if intervals:
        results["ci95"] = {**intervals, "resamples": s.bootstrap, "seed": s.bootstrap_seed}
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
    if not rows:                   # a grounding manifest alone
        lines = []
    if results.get("grounding"):
        lines += [""] * bool(lines) + [grounding_table(results["grounding"])]
    return "\n".join(lines)


def grounding_table(g):
    """The grounding scores (means of the class means), a map per row: the model's share map and
    contrast map beside maps that do not look at the image (a random grid, and on the synthetic
    set the text-only prior); then the same for the sentences that name the finding alone."""
    grid = g["random_grid"]["grid"]
    rows = [("model: share map", g), ("model: contrast map", g.get("contrast")),
            (f"random {grid}x{grid} grid", g["random_grid"]), ("text-only prior", g.get("text_prior")),
            ("no place: share map", g.get("unlocated")),
            ("no place: contrast map", g.get("contrast_unlocated")),
            ("no place: text-only prior", g.get("text_prior_unlocated"))]
    metrics = (("pointing_game", "pointing game"), ("signed_cnr", "signed CNR"),
               ("cnr", "CNR (unsigned)"), ("miou", "mIoU"))
    head = f"grounding, mean of {len(g['per_class'])} classes"
    lines = [f"{head:<30}" + "".join(f"  {name:>14}" for _, name in metrics)]
    for name, c in rows:
        if c is not None:
            lines.append(f"{name:<30}" + "".join(f"  {c['class_mean'][m]:14.3f}" for m, _ in metrics))
    if "grid_ceiling" in g:
        lines.append(f"{f'best any {grid}x{grid} map can do':<30}  "
                     f"{g['grid_ceiling']['class_mean']['pointing_game']:14.3f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Command line.


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Zero-shot, few-shot and retrieval evaluation of a train.py checkpoint. "
                    "With no manifest it runs the synthetic benchmark: 5 x 200 zero-shot images "
                    "and 1000 held-out retrieval pairs, about 15 s for the tiny model on 2 CPU "
                    "cores. With a manifest, the parts that have none are skipped. With --image, "
                    "none of it runs: your images' class probabilities, or a sentence's map.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="train.py's output folder, or its ckpt.pt (tokenizer.json beside it)")
    p.add_argument("--use-teacher", action="store_true",
                   help="evaluate the EMA teacher's weights instead of the student's")
    p.add_argument("--eval-manifest", metavar="CSV",
                   help="zero-shot and few-shot on real images: a CSV with columns image,label")
    p.add_argument("--prompts", metavar="JSON",
                   help='class prompts {"class": ["prompt", ...], ...} for --eval-manifest, or with '
                        '--image instead of --classes (a class: the mean of its prompts\' embeddings)')
    p.add_argument("--retrieval-manifest", metavar="CSV",
                   help="retrieval on real pairs: a CSV with columns image,text (and, if it has a "
                        "split column, only its 'test' rows are used)")
    p.add_argument("--data-cache", default="data_cache", metavar="DIR",
                   help="folder for decoded manifests, memory-mapped at the next run ('' = none: "
                        "decode into memory; default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file (with "
                   "--image: the probabilities it prints)")
    p.add_argument("--show", metavar="PNG",
                   help="draw zero-shot images with their true finding and top-3 predictions")
    p.add_argument("--show-grounding", metavar="PNG",
                   help="draw grounding studies: the image, the true region (green) and the "
                        "contrast map of its sentence over it; with --image, --text's share map "
                        "over each image (cells of 128 x 186 px, 4 a row)")
    p.add_argument("--grounding-manifest", metavar="CSV",
                   help="phrase grounding on real images: a CSV with columns image,text,x,y,w,h "
                        "(a box in the image's pixels) and optionally label (docs/grounding.md)")
    p.add_argument("--image", nargs="+", metavar="PNG",
                   help="your own images (PNG, JPEG; read as a manifest's rows are) to ask about "
                        "with --classes, --prompts or --text: the benchmark does not run")
    p.add_argument("--classes", metavar="NAMES",
                   help='with --image: "pleural effusion,no finding,...", each name its own prompt '
                        "(default model, synthetic set: 0.90 zero-shot accuracy, 0.92 with its 5 "
                        "report sentences per finding, which are no templates for other names; an "
                        "ensemble of yours: --prompts). Prints per image each class's probability, "
                        "a softmax of s * cosine at the model's s, and the top class")
    p.add_argument("--text", metavar="SENTENCE",
                   help="with --image and --show-grounding: draw where this sentence lands in "
                        "each image (the grounding evaluation's map: each patch's share of the score)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda, else mps, else cpu), or cpu, cuda, cuda:1, mps (default: "
                        "%(default)s)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="the forward passes' precision. auto: as train.py, bf16 autocast on a card "
                        "with bf16 tensor cores, fp16 autocast on an older CUDA card, fp32 on the "
                        "CPU and MPS (default: %(default)s)")
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
    args = p.parse_args(argv)
    args.given = {k for k, v in vars(args).items() if v != p.get_default(k)}   # for --image's checks
    return args


def check_options(args):
    """Check every option and path before any slow work, so a typo fails in a second. Returns the
    --prompts file's class prompts (None without it); with --image, --classes or --text,
    evaluation.predict.check_image_options'."""
    if args.image or args.classes is not None or args.text is not None:
        return check_image_options(args, args.given & set(BENCHMARK_OPTIONS))
    prompts = check_benchmark_options(args.eval_manifest, args.prompts, args.retrieval_manifest,
                                      args.grounding_manifest, "--eval-manifest or --image")
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
    return prompts


def run(args):
    t0 = time.time()
    prompts = check_options(args)
    try:
        args.device = pick_device(args.device)
    except ValueError as e:
        raise InputError(f"--device {e}") from None
    model, tokenizer, ckpt = load_checkpoint(args.checkpoint, args.use_teacher, args.device)
    cfg = model.cfg
    why = precision_reason(args.precision, args.device)
    args.precision = resolve_precision(args.precision, args.device)
    print(f"loaded the {'teacher' if args.use_teacher else 'student'} of {args.checkpoint} "
          f"(step {ckpt.get('step', '?')}, {model.num_params() / 1e6:.2f}M parameters, "
          f"{cfg.image_size}px) on {args.device}, {args.precision} ({why})")
    if args.image:
        return answer(model, tokenizer, args, prompts)    # your images: nothing of the benchmark

    zs, ret = read_benchmark(args.eval_manifest, prompts, args.retrieval_manifest, cfg.image_size,
                             cfg.in_channels, cache_dir=args.data_cache or None)
    if args.grounding_manifest and zs is None and ret is None:
        zs = ret = False             # real data replaces the synthetic benchmark: grounding alone
    gr = read_grounding(args.grounding_manifest, cfg.image_size, cfg.in_channels,
                        others=zs is not None or ret is not None)
    settings = EvalSettings(n_per_class=args.n_per_class, n_retrieval=args.n_retrieval,
                            eval_seed=args.eval_seed, seeds=tuple(range(args.seeds)),
                            bootstrap=args.bootstrap, batch_size=args.batch_size,
                            precision=args.precision)
    results = evaluate(model, tokenizer, args.device, cfg.image_size, zs=zs, ret=ret, gr=gr,
                       settings=settings, log=print)
    print()
    print(format_table(results))
    print(f"\n({time.time() - t0:.0f} s)")

    if args.json:
        write_text(args.json, json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    if args.show:
        show_predictions(model, tokenizer, zs, args)
    if args.show_grounding:
        show_grounding(model, tokenizer, gr, args)


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
