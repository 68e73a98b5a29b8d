"""What momentum self-distillation buys: seven training arms, the same samples seen, the same seeds.

    python ablation.py --dry-run          # the exact train.py commands, nothing run
    python ablation.py                    # 7 arms x seeds 0,1: about half an hour on 2 idle CPU cores
    python ablation.py --only e,b --seeds 0,1,2 --extra="--image-size 32"

With a micro-batch of b pairs, k micro-batches per window and S optimizer steps:

    a  CLIP, batch b              --method clip       --batch-size b   --accum-steps 1   S·k steps
    b  CLIP, batch k·b            --method clip       --batch-size k·b --accum-steps 1   S steps
    c  CLIP, naive accumulation   --method clip-naive --batch-size b   --accum-steps k   S steps
    d  queue + teacher, alpha 0   --method msd --alpha 0 --batch-size b --accum-steps k   S steps
    e  MSD, k×b                   --method msd        --batch-size b   --accum-steps k   S steps
    f  MSD, no accumulation       --method msd        --batch-size b   --accum-steps 1   S·k steps
    g  CLIP exact k×b             --method clip       --batch-size b   --accum-steps k   S steps

so every arm sees S·k·b samples. (b) is what MSD tries to match without the memory; (a) and (c)
are what a small card gives you naively; (g) is (b)'s exact gradient at the memory of b, for one
more student forward (accumulate.clip_step's feature cache), the fair baseline for (e) at the
same cost; (d) separates the bigger bank (queue and window) from the distillation (alpha); (f)
separates the window from the queue. Learning-rate and alpha warm-ups
and the teacher's EMA are counted in optimizer steps by train.py, so they are scaled with each
arm's steps: every arm warms up, and averages its teacher, over the same number of samples.

Each run is exactly what a user would type (`python train.py ...` in a subprocess) and writes
results/ablation/ARM-seedN/{eval.json, metrics.jsonl, train.log}; runs whose eval.json exists are
skipped and interrupted ones continue with --resume, so the script can be run again after a stop.
Then one markdown table, mean ± half the range over seeds, and results/ablation.json.

This file imports neither torch nor the project: on Linux a child's peak resident size (what
train.py logs as peak_mem_mb on the CPU) starts from its parent's, so the parent stays small.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# arm -> (description, method, micro-batch is k·b?, accum-steps is k?, steps are S·k?, alpha 0?)
ARMS = {
    "a": ("CLIP, batch b", "clip", False, False, True, False),
    "b": ("CLIP, batch k·b", "clip", True, False, False, False),
    "c": ("CLIP, naive accumulation k×b", "clip-naive", False, True, False, False),
    "d": ("queue + teacher, alpha 0, k×b", "msd", False, True, False, True),
    "e": ("MSD, k×b", "msd", False, True, False, False),
    "f": ("MSD, b, no accumulation", "msd", False, False, True, False),
    "g": ("CLIP exact k×b (feature cache)", "clip", False, True, False, False),
}

# train.py options this script sets itself: passing them through --extra would break the
# comparison (different samples seen, seeds or warm-ups between arms), so it refuses them.
OWN_OPTIONS = {"--method", "--batch-size", "--accum-steps", "--steps", "--warmup-steps",
               "--alpha-warmup", "--alpha", "--momentum", "--seed", "--out", "--eval-every",
               "--n-train", "--resume"}

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
    ("peak MB", "peak_mem_mb", 0),
    ("train min", "train_min", 1),
]


# -----------------------------------------------------------------------------
# Pure helpers (tests/test_bench.py pins them).

def arm_settings(arm, b, k, steps):
    """train.py's method, micro-batch, accumulation and steps for one arm, and the factor its
    step-counted warm-ups are scaled by (k for the arms that take k times more, smaller steps)."""
    _, method, big_batch, accumulate, more_steps, alpha0 = ARMS[arm]
    return {"method": method, "batch_size": k * b if big_batch else b,
            "accum_steps": k if accumulate else 1, "steps": steps * k if more_steps else steps,
            "scale": k if more_steps else 1, "alpha0": alpha0}


def samples_seen(s):
    return s["steps"] * s["batch_size"] * s["accum_steps"]


def train_command(arm, seed, args, python=sys.executable):
    """The train.py command line of one run, as a list."""
    s = arm_settings(arm, args.batch_size, args.accum_steps, args.steps)
    cmd = [python, os.path.relpath(os.path.join(HERE, "train.py")),
           "--method", s["method"], "--batch-size", str(s["batch_size"]),
           "--accum-steps", str(s["accum_steps"]), "--steps", str(s["steps"]),
           "--warmup-steps", str(args.warmup_steps * s["scale"]),
           "--n-train", str(args.n_train), "--eval-every", "0", "--seed", str(seed),
           "--out", run_dir(args.out_dir, arm, seed)]
    if s["method"] == "msd":
        # The teacher's EMA, like the warm-ups, is counted in steps: m per step over k times more
        # steps becomes m^(1/k), so the teacher averages over the same number of samples.
        cmd += ["--alpha-warmup", str(args.alpha_warmup * s["scale"]),
                "--momentum", f"{args.momentum ** (1 / s['scale']):.6g}"]
    if s["alpha0"]:
        cmd += ["--alpha", "0"]
    elif s["method"] == "msd" and args.alpha is not None:
        cmd += ["--alpha", str(args.alpha)]
    return cmd + shlex.split(args.extra)


def run_dir(out_dir, arm, seed):
    return os.path.join(out_dir, f"{arm}-seed{seed}")


def mean_spread(values):
    """(mean, half the range) of the values that are not None; (None, None) when there are none.
    Half the range rather than a standard deviation: with 2 seeds it is the distance from the mean
    to either run, which is what a reader can check against the per-seed numbers."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def fmt_mean_spread(values, digits=3):
    mean, spread = mean_spread(values)
    if mean is None:
        return "–"
    if len([v for v in values if v is not None]) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def summarise_run(eval_results, metrics_rows):
    """One run's numbers for the table, from eval.json and the rows of metrics.jsonl."""
    zs = eval_results.get("zero_shot", {})
    fs = eval_results.get("few_shot", {})
    ret = eval_results.get("retrieval", {})
    train_rows = [r for r in metrics_rows if "peak_mem_mb" in r]
    return {"zero_shot_accuracy": zs.get("accuracy"), "zero_shot_auc": zs.get("auc"),
            "few_shot_1": fs.get("1"), "few_shot_16": fs.get("16"),
            "i2t_r1": ret.get("i2t_r1"), "i2t_r10": ret.get("i2t_r10"),
            "t2i_r1": ret.get("t2i_r1"), "t2i_r10": ret.get("t2i_r10"),
            "peak_mem_mb": max((r["peak_mem_mb"] for r in train_rows), default=None),
            "train_min": train_rows[-1]["elapsed_s"] / 60 if train_rows else None}


def aggregate(runs):
    """{arm: {seed: summary}} -> {arm: {metric: {"mean", "spread", "n"}}}."""
    out = {}
    for arm, by_seed in runs.items():
        out[arm] = {}
        for _, key, _ in METRICS:
            values = [s[key] for s in by_seed.values() if s.get(key) is not None]
            mean, spread = mean_spread(values)
            out[arm][key] = {"mean": mean, "spread": spread, "n": len(values)}
    return out


def format_table(runs, arms, b, k):
    """One markdown table: a row per arm, mean ± half the range over the seeds that finished."""
    head = ["arm", "what", "micro-batch × k", "seeds"] + [h for h, _, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * len(METRICS)]
    for arm in arms:
        s = arm_settings(arm, b, k, 1)
        by_seed = runs.get(arm, {})
        cells = [arm, ARMS[arm][0], f"{s['batch_size']} × {s['accum_steps']}", str(len(by_seed))]
        cells += [fmt_mean_spread([r.get(key) for r in by_seed.values()], digits)
                  for _, key, digits in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------

def read_run(out):
    """A finished run's summary, or None when its eval.json is not there yet."""
    eval_path = os.path.join(out, "eval.json")
    if not os.path.exists(eval_path):
        return None
    with open(eval_path) as f:
        results = json.load(f)
    rows = []
    metrics_path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return summarise_run(results, rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--batch-size", type=int, default=16, help="micro-batch b")
    a("--accum-steps", type=int, default=8, help="k: micro-batches per window (window k·b)")
    a("--steps", type=int, default=200,
      help="S: optimizer steps of the k×b arms (b, c, d, e, g); arms a and f take S·k")
    a("--warmup-steps", type=int, default=None,
      help="learning-rate warm-up in steps of the k×b arms, scaled by k for a and f (default S/6, as train.py: 100 of 600)")
    a("--alpha-warmup", type=int, default=None,
      help="alpha warm-up in steps of the k×b arms, scaled by k for a and f (default S/6)")
    a("--alpha", type=float, default=None,
      help="alpha of the MSD arms e and f (default: train.py's); arm d always has 0")
    a("--momentum", type=float, default=0.99,
      help="teacher EMA momentum per step of the k×b arms; m^(1/k) for arm f. Below train.py's "
           "0.995 because the runs are short: 0.995^200 leaves 37%% of the random initial "
           "weights in the teacher, 0.99^200 13%%")
    a("--n-train", type=int, default=20000, help="synthetic training pairs (train.py --n-train)")
    a("--seeds", default="0,1", help="comma-separated seeds; every arm runs every seed")
    a("--only", default=",".join(ARMS), help="comma-separated arms to run, of " + ",".join(ARMS))
    a("--extra", default="", help='more train.py options for every run, e.g. --extra="--image-size 32"')
    a("--out-dir", default="results/ablation", help="one folder per run: ARM-seedN")
    a("--json", default="results/ablation.json", help="where to write every number")
    a("--dry-run", action="store_true", help="print the commands and the samples per arm; run nothing")
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


def main(argv=None):
    _, args = parse_args(argv)
    b, k = args.batch_size, args.accum_steps
    print(f"ablation: micro-batch b = {b}, k = {k} (window {k * b}), S = {args.steps} steps, "
          f"warm-ups {args.warmup_steps} (lr) and {args.alpha_warmup} (alpha) steps and momentum "
          f"{args.momentum} at k×b (scaled for the S·k-step arms), "
          f"seeds {args.seeds}, n-train {args.n_train}" + (f", extra: {args.extra}" if args.extra else ""))
    for arm in args.only:
        s = arm_settings(arm, b, k, args.steps)
        print(f"  {arm}  {ARMS[arm][0]:<30} {s['steps']:>6} steps x {s['batch_size']:>4} x "
              f"{s['accum_steps']:>2} = {samples_seen(s)} samples")
    jobs = [(arm, seed) for seed in args.seeds for arm in args.only]

    if args.dry_run:
        for arm, seed in jobs:
            print(shlex.join(train_command(arm, seed, args)))
        return 0

    failed = []
    for i, (arm, seed) in enumerate(jobs):
        out = run_dir(args.out_dir, arm, seed)
        tag = f"[{i + 1}/{len(jobs)}] {arm} seed {seed}"
        if os.path.exists(os.path.join(out, "eval.json")):
            print(f"{tag}: skipped, {out}/eval.json exists (delete the folder to run it again)")
            continue
        cmd = train_command(arm, seed, args)
        if os.path.exists(os.path.join(out, "ckpt.pt")):
            cmd.append("--resume")        # interrupted earlier: continue where it stopped
            print(f"{tag}: continuing the interrupted run in {out} (its train time counts only "
                  f"from the restart)")
        os.makedirs(out, exist_ok=True)
        log_path = os.path.join(out, "train.log")
        print(f"{tag}: {shlex.join(cmd)}\n    log: {log_path}", flush=True)
        t = time.time()
        with open(log_path, "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        summary = read_run(out)
        if rc != 0 or summary is None:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-5:])
            why = f"exit {rc}" if rc != 0 else "stopped before writing eval.json"
            print(f"{tag}: FAILED ({why}) after {(time.time() - t) / 60:.1f} min; last lines "
                  f"of {log_path}:\n{tail}", flush=True)
            failed.append(f"{arm}-seed{seed}")
            continue
        print(f"{tag}: done in {(time.time() - t) / 60:.1f} min: zero-shot accuracy "
              f"{summary['zero_shot_accuracy']:.3f}, AUC {summary['zero_shot_auc']:.3f}", flush=True)

    runs = {}
    for arm, seed in jobs:
        summary = read_run(run_dir(args.out_dir, arm, seed))
        if summary is not None:
            runs.setdefault(arm, {})[seed] = summary
    table = format_table(runs, args.only, b, k)
    print(f"\nmean ± half the range over seeds {args.seeds}; micro-batch b = {b}, k = {k}, "
          f"{args.steps * k * b} samples per arm; peak MB: train.py's peak memory (CPU: resident size "
          f"of the process; CUDA: max allocated); train min: training only, final evaluation excluded\n")
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        settings = {key: v for key, v in vars(args).items() if key != "dry_run"}
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "command": sys.argv,
                       "commands": {f"{arm}-seed{seed}": shlex.join(train_command(arm, seed, args))
                                    for arm, seed in jobs},
                       "runs": {arm: {str(s): v for s, v in by.items()} for arm, by in runs.items()},
                       "aggregate": aggregate(runs), "table": table}, f, indent=1)
        print(f"\nwrote {args.json}")
    if failed:
        print(f"failed: {', '.join(failed)} (see their train.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
