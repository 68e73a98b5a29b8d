"""When is momentum self-distillation worth it? Training arms at the same samples, seeds and memory.

    python ablation.py --dry-run                   # the exact train.py commands, nothing run
    python ablation.py --report                    # the table of the runs recorded so far
    python ablation.py --only a,g,e --seeds 0,1,2  # the arms that carry the claim: ~25 min per run-seed
    python ablation.py                             # every arm, seeds 0,1 (hours on 2 CPU cores)

With a micro-batch of b pairs (what the card holds), k micro-batches per window and S optimizer
steps (defaults 32, 4 and 600: every arm sees 76,800 samples, the budget of train.py's default
before the half-cost one of 500 steps of 2 x 32; the MSD arms keep that default's recipe too,
m 0.995 and --queue-size auto, so the recorded arms stay reproducible):

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
separates the bigger bank (queue and window) from the distillation (alpha); (f) separates the
window from the queue. Then MSD k×b with one remedy each for its short-run weaknesses:

    q  the queue joins the bank after the warm-up (--queue-start S/6; SwAV, Caron et al. 2020);
       train.py's default since this ablation (arm e is MSD's defaults before it)
    h  the teacher's half-life a twentieth of the run (--momentum-half-life 0.05)
    m  MoCo v3's momentum, a cosine from 0.99 to 1 (--momentum-schedule cosine, Chen et al. 2021)
    w  alpha warmed up over half the run (--alpha-warmup S/2; ALBEF warms up over its first epoch)

Learning-rate and alpha warm-ups and the teacher's EMA are counted in optimizer steps by
train.py, so they are scaled with each arm's steps: every arm warms up, and averages its teacher,
over the same number of samples. The arms with a teacher are evaluated twice: the student, and the
teacher's EMA weights (`eval.py --use-teacher`), a weight average that is free at the end of a run.
Every student is also evaluated on a second, disjoint synthetic set (`eval.py --eval-seed 3003`,
column "2nd set acc"): an order of the arms that holds there was not chosen on the first set's
images. Runs recorded before that column existed get it on the next call, if their folder is there.

Each run is exactly what a user would type (`python train.py ...` in a subprocess) and writes
results/ablation/ARM-seedN/{eval.json, eval_teacher.json, eval_second.json, metrics.jsonl,
train.log}. Every finished run's numbers go at once into the JSON report (by default docs/results/ablation.json, which is
small and committed), with its command, commit and machine; a run already in the report or with an
eval.json is skipped, an interrupted one continues with --resume. So the ablation can be spread over
many sessions, on machines that keep nothing but the repository. Then one markdown table, mean ±
standard deviation over seeds.

This file imports neither torch nor the project: on Linux a child's peak resident size (what
train.py logs as peak_mem_mb on the CPU) starts from its parent's, so the parent stays small.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

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
    "q": ("MSD k×b, queue after the warm-up (default ea80c34 to 53a704d)", "msd", False, True, False, ("--queue-start", "S/6")),
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
# Pure helpers (tests/test_bench.py pins them).

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
        # MSD's defaults as they were when the ablation began: the queue from the first step (the
        # runs recorded before train.py's default became "after the warm-up" had it implicitly).
        opts["--queue-start"] = "0"
        # and the queue itself, sized from the training set (2048 here), which train.py's default
        # was until the half-cost recipe (no queue) replaced it
        opts["--queue-size"] = "auto"
        if args.alpha is not None:
            opts["--alpha"] = str(args.alpha)
    opts.update(zip(s["options"][::2], s["options"][1::2]))
    cmd = [python, os.path.relpath(os.path.join(HERE, "train.py"))]
    for name, value in opts.items():
        cmd += [name, value]
    return cmd + shlex.split(args.extra)


# synthetic.SECOND_EVAL_SEED (this file does not import the project): every run is evaluated on a
# second, disjoint synthetic set too, so an arm that wins on the first must win on images that
# played no part in choosing it.
SECOND_EVAL_SEED = 3003


def second_command(arm, seed, args, python=sys.executable):
    """eval.py on the run's checkpoint (the student), on the second evaluation set."""
    out = run_dir(args.out_dir, arm, seed)
    return [python, os.path.relpath(os.path.join(HERE, "eval.py")), "--checkpoint", out,
            "--eval-seed", str(SECOND_EVAL_SEED), "--json", os.path.join(out, "eval_second.json")]


def teacher_command(arm, seed, args, python=sys.executable):
    """eval.py on the run's checkpoint with the teacher's weights, the same benchmark as train.py's."""
    out = run_dir(args.out_dir, arm, seed)
    return [python, os.path.relpath(os.path.join(HERE, "eval.py")), "--checkpoint", out,
            "--use-teacher", "--json", os.path.join(out, "eval_teacher.json")]


def run_dir(out_dir, arm, seed):
    return os.path.join(out_dir, f"{arm}-seed{seed}")


def mean_std(values):
    """(mean, sample standard deviation) of the values that are not None; the deviation is None
    for a single value, and both are None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt_mean_std(values, digits=3):
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise_run(eval_results, metrics_rows, teacher_results=None, second_results=None):
    """One run's numbers for the table, from eval.json, the rows of metrics.jsonl, for the arms
    with a teacher eval_teacher.json (its metrics prefixed "teacher_"), and eval_second.json, the
    student on the second evaluation set (prefixed "second_")."""
    def metrics(res):
        zs, fs, ret = res.get("zero_shot", {}), res.get("few_shot", {}), res.get("retrieval", {})
        return {"zero_shot_accuracy": zs.get("accuracy"), "zero_shot_auc": zs.get("auc"),
                "few_shot_1": fs.get("1"), "few_shot_16": fs.get("16"),
                "i2t_r1": ret.get("i2t_r1"), "i2t_r10": ret.get("i2t_r10"),
                "t2i_r1": ret.get("t2i_r1"), "t2i_r10": ret.get("t2i_r10")}
    train_rows = [r for r in metrics_rows if "peak_mem_mb" in r]
    out = {**metrics(eval_results),
           "peak_mem_mb": max((r["peak_mem_mb"] for r in train_rows), default=None),
           "train_min": train_rows[-1]["elapsed_s"] / 60 if train_rows else None}
    if teacher_results is not None:
        out.update({f"teacher_{key}": v for key, v in metrics(teacher_results).items()})
    if second_results is not None:
        out.update({f"second_{key}": v for key, v in metrics(second_results).items()})
    return out


def aggregate(runs):
    """{arm: {seed: summary}} -> {arm: {metric: {"mean", "std", "n"}}}, teacher metrics included."""
    out = {}
    for arm, by_seed in runs.items():
        keys = sorted({key for s in by_seed.values() for key in s})
        out[arm] = {}
        for key in keys:
            values = [s[key] for s in by_seed.values() if s.get(key) is not None]
            mean, std = mean_std(values)
            out[arm][key] = {"mean": mean, "std": std, "n": len(values)}
    return out


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


def compare(runs, x, y, key="zero_shot_accuracy"):
    """Arm x against arm y on one metric: (difference of means, the larger of the two standard
    deviations, whether the difference exceeds it). None when either arm has fewer than 2 seeds."""
    (mx, sx), (my, sy) = (mean_std([r.get(key) for r in runs.get(a, {}).values()]) for a in (x, y))
    if sx is None or sy is None:
        return None
    spread = max(sx, sy)
    return mx - my, spread, abs(mx - my) > spread


# The pairs whose order the README's reading rests on: MSD against the CLIP arms, the ways to a
# batch of k·b against each other (b, c against g), what α and accumulation do to MSD (d, f
# against e), and each remedy against MSD's old default (e) and against exact CLIP (g).
PAIRS = [("e", "g"), ("e", "a"), ("g", "a"), ("e", "b"), ("b", "g"), ("c", "g"), ("c", "a"), ("d", "e"),
         ("f", "e")] + \
        [(r, y) for r in "qhmw" for y in "eg"]


def comparisons(runs, key="zero_shot_accuracy"):
    """A line per pair of PAIRS with at least 2 seeds on both sides."""
    lines = []
    for x, y in PAIRS:
        c = compare(runs, x, y, key)
        if c is not None:
            lines.append(f"{key} {x} - {y}: {c[0]:+.3f} ({'beyond' if c[2] else 'within'} the "
                         f"larger standard deviation, {c[1]:.3f})")
    return lines


# -----------------------------------------------------------------------------

def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_run(out):
    """A finished run's summary, or None when its eval.json is not there yet."""
    if not os.path.exists(os.path.join(out, "eval.json")):
        return None
    rows = []
    metrics_path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    extra = [os.path.join(out, f"eval_{name}.json") for name in ("teacher", "second")]
    teacher, second = (read_json(path) if os.path.exists(path) else None for path in extra)
    return summarise_run(read_json(os.path.join(out, "eval.json")), rows, teacher, second)


def evaluate_more(arm, seed, args, out):
    """The teacher (arms with one) and the second evaluation set, each unless its JSON exists.
    Returns None, or what failed."""
    todo = [("second", second_command)] + ([("teacher", teacher_command)] if has_teacher(arm) else [])
    for name, command in todo:
        if os.path.exists(os.path.join(out, f"eval_{name}.json")):
            continue
        cmd = command(arm, seed, args)
        with open(os.path.join(out, f"eval_{name}.log"), "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                return f"{shlex.join(cmd)}; see {out}/eval_{name}.log"
    return None


def machine():
    """What the numbers were measured on: CPU model and cores (or the GPU train.py logged)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--batch-size", type=int, default=32, help="micro-batch b")
    a("--accum-steps", type=int, default=4, help="k: micro-batches per window (window k·b)")
    a("--steps", type=int, default=600,
      help="S: optimizer steps of the k×b arms; arms a and f take S·k")
    a("--warmup-steps", type=int, default=None,
      help="learning-rate warm-up in steps of the k×b arms, scaled by k for a and f (default S/6, as train.py: 100 of 600)")
    a("--alpha-warmup", type=int, default=None,
      help="alpha warm-up in steps of the k×b arms, scaled by k for a and f (default S/6)")
    a("--alpha", type=float, default=None,
      help="alpha of the MSD arms (default: train.py's); arm d always has 0")
    a("--momentum", type=float, default=0.995,
      help="teacher EMA momentum per step of the k×b arms (train.py's before the half-cost default, "
           "which has 0.98); m^(1/k) for arm f")
    a("--n-train", type=int, default=20000, help="synthetic training pairs (train.py --n-train)")
    a("--seeds", default="0,1", help="comma-separated seeds; every arm runs every seed")
    a("--only", default=MAIN_ARMS, help="comma-separated arms to run, of " + ",".join(ARMS))
    a("--extra", default="", help='more train.py options for every run, e.g. --extra="--image-size 32"')
    a("--out-dir", default="results/ablation", help="one folder per run: ARM-seedN (not committed)")
    a("--json", default="docs/results/ablation.json",
      help="the report: every finished run's numbers, command, commit and machine; runs in it are skipped")
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(tmp, path)                      # never a torn report, even when killed mid-write
    return runs


def main(argv=None):
    _, args = parse_args(argv)
    b, k = args.batch_size, args.accum_steps
    settings = {key: v for key, v in vars(args).items()
                if key not in ("dry_run", "report", "only", "seeds", "json")}
    if args.report:
        if not os.path.exists(args.json):
            print(f"error: --report: no report at {args.json}", file=sys.stderr)
            return 2
        report = read_json(args.json)
        runs = tabulate(report, argparse.Namespace(**report["settings"]))
        print(f"{len(report['records'])} runs recorded in {args.json}, settings {report['settings']}\n")
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
    print(f"ablation: micro-batch b = {b}, k = {k} (window {k * b}), S = {args.steps} steps, "
          f"warm-ups {args.warmup_steps} (lr) and {args.alpha_warmup} (alpha) steps and momentum "
          f"{args.momentum} at k×b (scaled for the S·k-step arms), "
          f"seeds {args.seeds}, n-train {args.n_train}" + (f", extra: {args.extra}" if args.extra else ""))
    for arm in args.only:
        s = arm_settings(arm, b, k, args.steps)
        print(f"  {arm}  {ARMS[arm][0]:<44} {s['steps']:>6} steps x {s['batch_size']:>4} x "
              f"{s['accum_steps']:>2} = {samples_seen(s)} samples")
    jobs = [(arm, seed) for seed in args.seeds for arm in args.only]

    if args.dry_run:
        for arm, seed in jobs:
            print(shlex.join(train_command(arm, seed, args)))
            if has_teacher(arm):
                print(shlex.join(teacher_command(arm, seed, args)))
            print(shlex.join(second_command(arm, seed, args)))
        return 0

    report = {"settings": settings, "records": {}}
    if args.json and os.path.exists(args.json):
        report = read_json(args.json)
        if report.get("settings") != settings:
            print(f"error: {args.json} holds runs with other settings ({report.get('settings')}); "
                  f"give another --json", file=sys.stderr)
            return 2
    failed = []
    for i, (arm, seed) in enumerate(jobs):
        key, out = f"{arm}-seed{seed}", run_dir(args.out_dir, arm, seed)
        tag = f"[{i + 1}/{len(jobs)}] {arm} seed {seed}"
        if key in report["records"]:
            print(f"{tag}: skipped, in {args.json} already (measured at commit "
                  f"{report['records'][key]['commit']})")
            summary = report["records"][key]["summary"]
            if "second_zero_shot_accuracy" not in summary and os.path.exists(os.path.join(out, "eval.json")):
                # recorded before the second set existed, and its checkpoint is still here
                failure = evaluate_more(arm, seed, args, out)
                if failure:
                    print(f"{tag}: FAILED to evaluate it on the second set ({failure})", flush=True)
                    failed.append(key)
                    continue
                summary.update({k: v for k, v in read_run(out).items() if k.startswith("second_")})
                write_report(args.json, args, report)
                print(f"{tag}: added the second evaluation set: zero-shot accuracy "
                      f"{summary['second_zero_shot_accuracy']:.3f}", flush=True)
            continue
        t = time.time()
        if os.path.exists(os.path.join(out, "eval.json")):
            print(f"{tag}: skipped, {out}/eval.json exists (delete the folder to run it again)")
        else:
            cmd = train_command(arm, seed, args)
            if os.path.exists(os.path.join(out, "ckpt.pt")):
                cmd.append("--resume")        # interrupted earlier: continue where it stopped
                print(f"{tag}: continuing the interrupted run in {out} (its train time counts only "
                      f"from the restart)")
            os.makedirs(out, exist_ok=True)
            log_path = os.path.join(out, "train.log")
            print(f"{tag}: {shlex.join(cmd)}\n    log: {log_path}", flush=True)
            with open(log_path, "a") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            if rc != 0 or not os.path.exists(os.path.join(out, "eval.json")):
                with open(log_path) as f:
                    tail = "".join(f.readlines()[-5:])
                why = f"exit {rc}" if rc != 0 else "stopped before writing eval.json"
                print(f"{tag}: FAILED ({why}) after {(time.time() - t) / 60:.1f} min; last lines "
                      f"of {log_path}:\n{tail}", flush=True)
                failed.append(key)
                continue
        failure = evaluate_more(arm, seed, args, out)
        if failure:
            print(f"{tag}: FAILED to evaluate the teacher or the second set ({failure})", flush=True)
            failed.append(key)
            continue
        summary = read_run(out)
        report["records"][key] = {"summary": summary, "command": shlex.join(train_command(arm, seed, args)),
                                  "commit": commit(), "machine": machine(),
                                  "date": datetime.date.today().isoformat()}
        if args.json:
            write_report(args.json, args, report)
        teacher = (f", teacher {summary['teacher_zero_shot_accuracy']:.3f}"
                   if summary.get("teacher_zero_shot_accuracy") is not None else "")
        print(f"{tag}: done in {(time.time() - t) / 60:.1f} min: zero-shot accuracy "
              f"{summary['zero_shot_accuracy']:.3f}{teacher}, AUC {summary['zero_shot_auc']:.3f}", flush=True)

    runs = write_report(args.json, args, report) if args.json else {}
    print(f"\nmean ± standard deviation over the seeds recorded; micro-batch b = {b}, k = {k}, "
          f"{args.steps * k * b} samples per arm; peak MB: train.py's peak memory (CPU: resident size "
          f"of the process; CUDA: max allocated); train min: training only, evaluation excluded\n")
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
