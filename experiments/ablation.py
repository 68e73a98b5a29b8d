"""When is momentum self-distillation worth it? This study compares training arms at equal samples.

Every arm sees the same number of samples with the same seeds, and all but one (b, the batch that
needs the memory) hold one micro-batch of b pairs at a time.

    python -m experiments.ablation --dry-run        # the exact train.py commands, nothing run
    python -m experiments.ablation --report         # the table of the runs recorded so far
    python -m experiments.ablation --only a,g,e --seeds 0,1,2   # the arms that carry the claim
    python -m experiments.ablation                  # arms a to g, seeds 0,1: 14 runs

The recorded runs trained for 7 to 14 min each on 2 CPU cores (the table's "train min"; two took
longer, 18 and 35 min), then were evaluated.

With a micro-batch of b pairs (what the card holds), k micro-batches per window and S optimizer
steps (defaults 32, 4 and 600: every arm sees 76,800 samples, more than train.py's default run of
500 steps of 2 x 32), and for the MSD arms a teacher momentum of 0.995 and --queue-size auto (a
queue of 2048 on the default training set). The study sets these itself rather than take
train.py's defaults, so that its recorded arms can be run again as they were measured:

    a  CLIP, batch b              --method clip       --batch-size b   --accum-steps 1   S·k steps
    b  CLIP, batch k·b            --method clip       --batch-size k·b --accum-steps 1   S steps
    c  CLIP, naive accumulation   --method clip-naive --batch-size b   --accum-steps k   S steps
    d  queue + teacher, alpha 0   --method msd --alpha 0 --batch-size b --accum-steps k   S steps
    e  MSD, k×b                   --method msd        --batch-size b   --accum-steps k   S steps
    f  MSD, no accumulation       --method msd        --batch-size b   --accum-steps 1   S·k steps
    g  CLIP exact k×b             --method clip       --batch-size b   --accum-steps k   S steps

(b) is what MSD tries to match without the memory; (a) and (c) are what a small card gives you
naively; (g) is (b)'s exact gradient at the memory of b, for one more student forward
(accumulate.clip_step's feature cache), the fair baseline for (e) at about the same cost; (d)
separates the bigger bank (queue and window) from the distillation (alpha 0: no soft targets, the
targets are the duplicate-aware positives P); (f) separates the window from the queue. Arms d, e
and f have the queue in the bank from the first step (--queue-start 0). Then MSD k×b with one
remedy each for its short-run weaknesses:

    q  the queue joins the bank after the warm-up (--queue-start S/6; SwAV, Caron et al. 2020)
    h  the teacher's half-life a twentieth of the run (--momentum-half-life 0.05)
    m  MoCo v3's momentum, a cosine from 0.99 to 1 (--momentum-schedule cosine, Chen et al. 2021)
    w  alpha warmed up over half the run (--alpha-warmup S/2; ALBEF warms up over its first epoch)

Learning-rate and alpha warm-ups and the teacher's EMA are counted in optimizer steps by
train.py, so they are scaled with each arm's steps: every arm warms up, and averages its teacher,
over the same number of samples. The arms with a teacher are evaluated twice: the student, and the
teacher's EMA weights (`eval.py --use-teacher`), a weight average that is free at the end of a run.
Every student is also evaluated on a second, disjoint synthetic set (`eval.py --eval-seed 3003`,
column "2nd set acc"): an order of the arms that holds there was not chosen on the first set's
images. The column is the mean over the runs whose record has that evaluation (the report's
"aggregate" gives each metric's number of runs).

Each run writes results/ablation/ARM-seedN/{eval.json, eval_teacher.json, eval_second.json,
metrics.jsonl, train.log} and is recorded at once in docs/results/ablation.json (small, committed),
resumably: studies.py, which the other studies share, says how. Then one markdown table, mean ±
standard deviation over seeds.
"""

import argparse
import os
import shlex
import sys

from experiments.studies import (ROOT, aggregate, compare, fmt_mean_std, read_json, record, said,
                                 second_command, teacher_command, train_and_evaluate, write_json)

# arm -> (description, method, micro-batch is k·b?, accum-steps is k?, steps are S·k?, options)
# Options may name "S/6" or "S/2": replaced by that share of the arm's own steps.
ARMS = {
    "a": ("CLIP, batch b", "clip", False, False, True, ()),
    "b": ("CLIP, batch k·b", "clip", True, False, False, ()),
    "c": ("CLIP, naive accumulation k×b", "clip-naive", False, True, False, ()),
    "d": ("queue + teacher, alpha 0, k×b", "msd", False, True, False, ("--alpha", "0")),
    "e": ("MSD, k×b, queue from step 0", "msd", False, True, False, ()),
    "f": ("MSD, b, no accumulation", "msd", False, False, True, ()),
    "g": ("CLIP exact k×b (feature cache)", "clip", False, True, False, ()),
    "q": ("MSD k×b, queue after the warm-up", "msd", False, True, False, ("--queue-start", "S/6")),
    "h": ("MSD k×b, teacher half-life 0.05 of the run", "msd", False, True, False,
          ("--momentum-half-life", "0.05")),
    "m": ("MSD k×b, momentum cosine from 0.99", "msd", False, True, False,
          ("--momentum-schedule", "cosine", "--momentum", "0.99")),
    "w": ("MSD k×b, alpha warm-up half the run", "msd", False, True, False, ("--alpha-warmup", "S/2")),
}
MAIN_ARMS = "a,b,c,d,e,f,g"

# train.py options this script sets itself: passing them through --extra would break the
# comparison (different samples seen, seeds or warm-ups between arms), so it refuses them.
OWN_OPTIONS = {"--method", "--batch-size", "--accum-steps", "--steps", "--warmup-steps",
               "--alpha-warmup", "--alpha", "--momentum", "--seed", "--out", "--eval-every",
               "--n-train", "--resume", "--queue-start"}

# (column header, where in a run's summary, digits)
METRICS = [
    ("zero-shot acc", "zero_shot_accuracy", 3),
    ("zero-shot AUC", "zero_shot_auc", 3),
    ("1-shot AUC", "few_shot_1", 3),
    ("16-shot AUC", "few_shot_16", 3),
    ("i2t R@1", "i2t_r1", 3),
    ("i2t R@10", "i2t_r10", 3),
    ("t2i R@1", "t2i_r1", 3),
    ("t2i R@10", "t2i_r10", 3),
    ("2nd set acc", "second_zero_shot_accuracy", 3),
    ("peak MB", "peak_mem_mb", 0),
    ("train min", "train_min", 1),
]


# -----------------------------------------------------------------------------
# Pure helpers (tests/test_ablation.py pins them).

def arm_settings(arm, b, k, steps):
    """train.py's method, micro-batch, accumulation and steps for one arm, and the factor its
    step-counted warm-ups are scaled by (k for the arms that take k times more, smaller steps)."""
    _, method, big_batch, accumulate, more_steps, options = ARMS[arm]
    steps = steps * k if more_steps else steps
    shares = {"S/6": str(round(steps / 6)), "S/2": str(round(steps / 2))}
    return {"method": method, "batch_size": k * b if big_batch else b,
            "accum_steps": k if accumulate else 1, "steps": steps,
            "scale": k if more_steps else 1, "options": [shares.get(o, o) for o in options]}


def samples_seen(s):
    return s["steps"] * s["batch_size"] * s["accum_steps"]


def has_teacher(arm):
    return ARMS[arm][1] == "msd"


def train_command(arm, seed, args, python=sys.executable):
    """The train.py command line of one run, as a list. An arm's own options replace the common
    ones of the same name (arm m's --momentum 0.99), so each option appears once."""
    s = arm_settings(arm, args.batch_size, args.accum_steps, args.steps)
    opts = {"--method": s["method"], "--batch-size": str(s["batch_size"]),
            "--accum-steps": str(s["accum_steps"]), "--steps": str(s["steps"]),
            "--warmup-steps": str(args.warmup_steps * s["scale"]),
            "--n-train": str(args.n_train), "--eval-every": "0", "--seed": str(seed),
            "--out": run_dir(args.out_dir, arm, seed)}
    if s["method"] == "msd":
        # The teacher's EMA, like the warm-ups, is counted in steps: m per step over k times more
        # steps becomes m^(1/k), so the teacher averages over the same number of samples.
        opts["--alpha-warmup"] = str(args.alpha_warmup * s["scale"])
        opts["--momentum"] = f"{args.momentum ** (1 / s['scale']):.6g}"
        # The study's queue, set here rather than left to train.py's defaults so that the recorded
        # arms stay what they measured: sized from the training set (2048 here), in the bank from
        # the first step (arm q's own --queue-start S/6 replaces that: the remedy it tests).
        opts["--queue-start"] = "0"
        opts["--queue-size"] = "auto"
        if args.alpha is not None:
            opts["--alpha"] = str(args.alpha)
    opts.update(zip(s["options"][::2], s["options"][1::2]))
    cmd = [python, os.path.relpath(os.path.join(ROOT, "train.py"))]
    for name, value in opts.items():
        cmd += [name, value]
    return cmd + shlex.split(args.extra)


def run_dir(out_dir, arm, seed):
    return os.path.join(out_dir, f"{arm}-seed{seed}")


def format_table(runs, arms, b, k):
    """One markdown table: a row per arm (and one for its teacher), mean ± std over its seeds."""
    head = ["arm", "what", "micro-batch × k", "seeds"] + [h for h, _, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * len(METRICS)]
    for arm in arms:
        s = arm_settings(arm, b, k, 1)
        by_seed = runs.get(arm, {})
        shape = f"{s['batch_size']} × {s['accum_steps']}"
        rows = [(arm, ARMS[arm][0], "")]
        if has_teacher(arm):
            rows.append((f"{arm} (teacher)", "its EMA weights", "teacher_"))
        for name, what, prefix in rows:
            cells = [name, what, shape, str(len(by_seed))]
            for _, key, digits in METRICS:
                own = key in ("peak_mem_mb", "train_min")     # the run's, the same for its teacher
                values = [r.get(key if own else prefix + key) for r in by_seed.values()]
                cells.append(fmt_mean_std(values, digits) if not (own and prefix) else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The pairs whose order the README's reading rests on: MSD against the CLIP arms, the ways to a
# batch of k·b against each other (b, c against g), what α and accumulation do to MSD (d, f
# against e), and each remedy against MSD without it (e) and against exact CLIP (g).
PAIRS = [("e", "g"), ("e", "a"), ("g", "a"), ("e", "b"), ("b", "g"), ("c", "g"), ("c", "a"), ("d", "e"),
         ("f", "e")] + \
        [(r, y) for r in "qhmw" for y in "eg"]


def comparisons(runs, key="zero_shot_accuracy"):
    """A line per pair of PAIRS with at least 2 seeds on both sides."""
    lines = []
    for x, y in PAIRS:
        c = compare(runs, x, y, key)
        if c is not None:
            lines.append(f"{key} {x} - {y}: {said(c, 'the larger standard deviation')}")
    return lines


# -----------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--batch-size", type=int, default=32, help="micro-batch b")
    a("--accum-steps", type=int, default=4, help="k: micro-batches per window (window k·b)")
    a("--steps", type=int, default=600,
      help="S: optimizer steps of the k×b arms; arms a and f take S·k")
    a("--warmup-steps", type=int, default=None,
      help="learning-rate warm-up in steps of the k×b arms, scaled by k for a and f "
           "(default S/6, as train.py: 100 of 600)")
    a("--alpha-warmup", type=int, default=None,
      help="alpha warm-up in steps of the k×b arms, scaled by k for a and f (default S/6)")
    a("--alpha", type=float, default=None,
      help="alpha of the MSD arms (default: train.py's); arm d always has 0")
    a("--momentum", type=float, default=0.995,
      help="teacher EMA momentum per step of the k×b arms (the study's, not train.py's default); "
           "m^(1/k) for arm f")
    a("--n-train", type=int, default=20000, help="synthetic training pairs (train.py --n-train)")
    a("--seeds", default="0,1", help="comma-separated seeds; every arm runs every seed")
    a("--only", default=MAIN_ARMS, help="comma-separated arms to run, of " + ",".join(ARMS))
    a("--extra", default="",
      help='more train.py options for every run, e.g. --extra="--image-size 32"')
    a("--out-dir", default="results/ablation", help="one folder per run: ARM-seedN (not committed)")
    a("--json", default="docs/results/ablation.json",
      help="the report: every finished run's numbers, command, commit and machine; runs in it "
           "are skipped")
    a("--dry-run", action="store_true", help="print the commands and the samples per arm; run nothing")
    a("--report", action="store_true",
      help="print the table and the comparisons of the runs recorded in --json; run nothing")
    args = p.parse_args(argv)
    if min(args.batch_size, args.accum_steps, args.steps, args.n_train) <= 0:
        p.error("--batch-size, --accum-steps, --steps and --n-train must be positive")
    args.warmup_steps = round(args.steps / 6) if args.warmup_steps is None else args.warmup_steps
    args.alpha_warmup = round(args.steps / 6) if args.alpha_warmup is None else args.alpha_warmup
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.only = [a.strip() for a in args.only.split(",") if a.strip()]
    unknown = [a for a in args.only if a not in ARMS]
    if unknown:
        p.error(f"--only: unknown arm(s) {unknown}; choose from {','.join(ARMS)}")
    clash = sorted({t.split("=")[0] for t in shlex.split(args.extra)} & OWN_OPTIONS)
    if clash:
        p.error(f"--extra may not set {', '.join(clash)}: ablation.py sets them per arm so that "
                f"the arms stay comparable; use its own options (--steps, --batch-size, "
                f"--accum-steps, --alpha, --momentum, --warmup-steps, --alpha-warmup, --n-train, "
                f"--seeds, --out-dir)")
    return p, args


def tabulate(report, args):
    """{arm: {seed: summary}} of every run recorded, and the report's aggregate and table updated."""
    runs = {}
    for key, rec in report["records"].items():
        arm, seed = key.rsplit("-seed", 1)
        runs.setdefault(arm, {})[int(seed)] = rec["summary"]
    arms = [a for a in ARMS if a in runs]
    report["aggregate"] = aggregate(runs)
    report["table"] = format_table(runs, arms, args.batch_size, args.accum_steps)
    return runs


def write_report(path, args, report):
    """Rewrite the report with every run recorded so far (also those of other --only / --seeds)."""
    runs = tabulate(report, args)
    write_json(path, report)
    return runs


def print_report(path):
    """--report: the table, the comparisons and each seed's zero-shot accuracy of the runs recorded
    in `path`, from the report alone. Returns the exit status."""
    if not os.path.exists(path):
        print(f"error: --report: no report at {path}", file=sys.stderr)
        return 2
    report = read_json(path)
    runs = tabulate(report, argparse.Namespace(**report["settings"]))
    print(f"{len(report['records'])} runs recorded in {path}, settings {report['settings']}\n")
    print(report["table"] + "\n")
    for key in ("zero_shot_accuracy", "t2i_r10"):
        print("\n".join(comparisons(runs, key)) or f"(no pair has 2 seeds on both sides: {key})")
    print("\nzero-shot accuracy per seed (student; teacher; second evaluation set):")
    for arm in (a for a in ARMS if a in runs):
        print(f"  {arm}  " + "; ".join(
            ", ".join(f"{seed}: {r[key]:.3f}" for seed, r in sorted(runs[arm].items())
                      if r.get(key) is not None) or "–"
            for key in ("zero_shot_accuracy", "teacher_zero_shot_accuracy",
                        "second_zero_shot_accuracy")))
    return 0


def print_plan(args):
    """The study's settings, and each arm's steps and samples."""
    b, k = args.batch_size, args.accum_steps
    print(f"ablation: micro-batch b = {b}, k = {k} (window {k * b}), S = {args.steps} steps, "
          f"warm-ups {args.warmup_steps} (lr) and {args.alpha_warmup} (alpha) steps and momentum "
          f"{args.momentum} at k×b (scaled for the S·k-step arms), seeds {args.seeds}, "
          f"n-train {args.n_train}" + (f", extra: {args.extra}" if args.extra else ""))
    for arm in args.only:
        s = arm_settings(arm, b, k, args.steps)
        print(f"  {arm}  {ARMS[arm][0]:<44} {s['steps']:>6} steps x {s['batch_size']:>4} x "
              f"{s['accum_steps']:>2} = {samples_seen(s)} samples")


def run_jobs(jobs, args, report):
    """Train and evaluate every (arm, seed) of jobs not in the report yet, recording each in
    --json as soon as it is done. Returns the keys of the runs that failed."""
    failed = []
    for i, (arm, seed) in enumerate(jobs):
        key, out = f"{arm}-seed{seed}", run_dir(args.out_dir, arm, seed)
        tag = f"[{i + 1}/{len(jobs)}] {arm} seed {seed}"
        if key in report["records"]:
            print(f"{tag}: skipped, in {args.json} already (measured at commit "
                  f"{report['records'][key]['commit']})")
            continue
        cmd = train_command(arm, seed, args)
        summary = train_and_evaluate(tag, cmd, out, has_teacher(arm))
        if summary is None:
            failed.append(key)
            continue
        report["records"][key] = record(summary, cmd)
        if args.json:
            write_report(args.json, args, report)
    return failed


def main(argv=None):
    _, args = parse_args(argv)
    if args.report:
        return print_report(args.json)
    print_plan(args)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.only]
    if args.dry_run:
        for arm, seed in jobs:
            print(shlex.join(train_command(arm, seed, args)))
            out = run_dir(args.out_dir, arm, seed)
            if has_teacher(arm):
                print(shlex.join(teacher_command(out)))
            print(shlex.join(second_command(out)))
        return 0

    settings = {key: v for key, v in vars(args).items()
                if key not in ("dry_run", "report", "only", "seeds", "json")}
    report = {"settings": settings, "records": {}}
    if args.json and os.path.exists(args.json):
        report = read_json(args.json)
        if report.get("settings") != settings:
            print(f"error: {args.json} holds runs with other settings ({report.get('settings')}); "
                  f"give another --json", file=sys.stderr)
            return 2
    failed = run_jobs(jobs, args, report)
    runs = write_report(args.json, args, report) if args.json else {}
    b, k = args.batch_size, args.accum_steps
    print(f"\nmean ± standard deviation over the seeds recorded; micro-batch b = {b}, k = {k}, "
          f"{args.steps * k * b} samples per arm; peak MB: train.py's peak memory (CPU: resident "
          f"size of the process; CUDA: max allocated); train min: training only, evaluation "
          f"excluded\n")
    print(report.get("table", ""))
    if args.json:
        print(f"\nwrote {args.json}")
        print("\n".join(comparisons(runs)))
    if failed:
        print(f"failed: {', '.join(failed)} (see their train.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
