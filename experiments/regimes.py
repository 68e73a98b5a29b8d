"""Where does momentum self-distillation pay? This study runs MSD against CLIP in four data regimes.

Every run has the default run's budget; the regimes are the synthetic set as it is, a small set,
noisy reports, and both.

    python -m experiments.regimes --dry-run        # the exact train.py commands, nothing run
    python -m experiments.regimes --report         # the tables so far, and what to use per regime
    python -m experiments.regimes --seeds 0,1,2    # all 48 runs, one after the other
    OMP_NUM_THREADS=1 python -m experiments.regimes --worker 1/2 &
    OMP_NUM_THREADS=1 python -m experiments.regimes --worker 2/2   # two halves, one per core

The recorded runs trained for about 7 min each (per arm on average: 6 min for clip-b, 7 to 7.5 for
the others), most of them two side by side on 2 CPU cores with one thread each (the --worker lines
above): about 3 hours of training for the 48, and their evaluations on top.

The premise of MSD (and of ALBEF's momentum distillation, which it follows) is data that is small
and noisy: radiologists leave findings out of reports, and paired data has mismatches. The
synthetic set is the opposite (20,000 pairs whose reports say exactly what the image shows), so the
study makes the premise on purpose, with train.py's own options:

    regime        --n-train   --report-noise   (noise: each shown finding left out of the report
    today           20,000        0              with probability P, and with probability P/2
    small            2,000        0              the report of another study; train.py's
    noisy           20,000        0.3            default schedule sees a set of 2,000 sixteen
    small-noisy      2,000        0.3            times)

("today" is the synthetic set as train.py renders it by default.) In each, four arms at the
default budget (500 steps of 2 x 32 = 32,000 samples) and otherwise train.py's defaults:

    clip-b    CLIP at b, the same samples      --method clip --accum-steps 1 --steps 1000
    clip      exact CLIP over the window       --method clip
    msd       MSD, the default                 (no options)
    msd-a0    MSD without soft targets         --alpha 0  (the teacher's bank, and as targets the
                                                           duplicate-aware positives P alone:
                                                           isolates the distillation)

Every run is evaluated on the clean synthetic benchmark (evaluation sets never get noise), on a
second, disjoint one (eval.py --eval-seed 3003), and for the MSD arms with the EMA teacher's
weights too. Runs go to results/regimes/REGIME/ARM-seedN/ and are recorded at once in
docs/results/regimes.json, resumably (studies.py).
"""

import argparse
import os
import shlex
import sys

from experiments.studies import (ROOT, compare, fmt_mean_std, mean_std, parse_worker, read_json,
                                 record, said, train_and_evaluate, write_json)

REGIMES = {  # name -> (training pairs, report noise)
    "today": (20000, 0.0),
    "small": (2000, 0.0),
    "noisy": (20000, 0.3),
    "small-noisy": (2000, 0.3),
}
# CLIP's positives were one-hot when this study ran (CLIP took duplicate-aware positives later):
# --no-duplicate-aware keeps its CLIP arms the computation that was recorded.
ARMS = {  # name -> (description, train.py options beyond the regime's)
    "clip-b": ("CLIP at b, the same samples", ("--method", "clip", "--accum-steps", "1",
                                               "--steps", "1000", "--no-duplicate-aware")),
    "clip": ("exact CLIP over the default window", ("--method", "clip", "--no-duplicate-aware")),
    "msd": ("MSD, the default", ()),
    "msd-a0": ("MSD with alpha 0 (no soft targets)", ("--alpha", "0")),
}
# (column header, summary key, digits); "2nd set" is the second evaluation set; "± test CI" the
# half-width of one run's bootstrap 95% interval over the 1,000 test images (eval.py), averaged over
# seeds: a difference between arms smaller than it is below what the test set can resolve
METRICS = [
    ("zero-shot acc", "zero_shot_accuracy", 3),
    ("± test CI", "zero_shot_accuracy_ci_half", 3),
    ("2nd set", "second_zero_shot_accuracy", 3),
    ("t2i R@10", "t2i_r10", 3),
    ("2nd set", "second_t2i_r10", 3),
    ("16-shot AUC", "few_shot_16", 3),
    ("train min", "train_min", 1),
]
# The differences the study is for: MSD against each CLIP arm, and the distillation alone.
PAIRS = [("msd", "clip"), ("msd", "clip-b"), ("msd", "msd-a0"), ("clip", "clip-b")]
KEYS = ["zero_shot_accuracy", "second_zero_shot_accuracy", "t2i_r10", "second_t2i_r10"]


def has_teacher(arm):
    return "--method" not in ARMS[arm][1]


def job_key(regime, arm, seed):
    return f"{regime}/{arm}-seed{seed}"


def latest(path, report):
    """The report as it is on disk now (other workers write to it too), else the one in memory."""
    return read_json(path) if os.path.exists(path) else report


def run_dir(out_dir, regime, arm, seed):
    return os.path.join(out_dir, regime, f"{arm}-seed{seed}")


def train_command(regime, arm, seed, args, python=sys.executable):
    n, noise = REGIMES[regime]
    cmd = [python, os.path.relpath(os.path.join(ROOT, "train.py")), "--n-train", str(n)]
    if noise:
        cmd += ["--report-noise", str(noise)]
    cmd += [*ARMS[arm][1], "--seed", str(seed), "--out", run_dir(args.out_dir, regime, arm, seed)]
    return cmd + shlex.split(args.extra)


def runs_by_cell(report):
    """{(regime, arm): {seed: summary}} of the recorded runs."""
    runs = {}
    for key, rec in report["records"].items():
        cell, seed = key.rsplit("-seed", 1)
        regime, arm = cell.split("/")
        summary = dict(rec["summary"])
        for prefix in ("", "teacher_"):
            lo, hi = (summary.get(f"{prefix}zero_shot_accuracy_ci_{end}") for end in ("lo", "hi"))
            if lo is not None and hi is not None:
                summary[f"{prefix}zero_shot_accuracy_ci_half"] = (hi - lo) / 2
        runs.setdefault((regime, arm), {})[int(seed)] = summary
    return runs


def format_table(runs):
    """A markdown table: a row per regime and arm (and one for the MSD arms' teachers), mean ± std
    over seeds."""
    head = ["regime", "arm", "seeds"] + [h for h, _, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * len(METRICS)]
    for regime in REGIMES:
        for arm in ARMS:
            by_seed = runs.get((regime, arm), {})
            if not by_seed:
                continue
            rows = [(arm, "")] + ([(f"{arm} teacher", "teacher_")] if has_teacher(arm) else [])
            for name, prefix in rows:
                cells = [regime, name, str(len(by_seed))]
                for _, key, digits in METRICS:
                    own = key == "train_min"                    # the run's, not the teacher's
                    values = [r.get(key if own else prefix + key) for r in by_seed.values()]
                    cells.append("" if own and prefix else fmt_mean_std(values, digits))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grounding_tables(runs):
    """Two markdown tables, the pointing game and CNR per class (grounding.py on the synthetic
    grounding set), for every cell that has them, student and teacher, mean ± std over seeds; the
    pointing game of a random map (the mask's share of the image) in the last row."""
    classes = sorted({key.split("/", 1)[1] for by_seed in runs.values() for r in by_seed.values()
                      for key in r if key.startswith("grounding_pointing_game/")})
    if not classes:
        return ""
    tables = []
    for metric, title in (("pointing_game", "pointing game"), ("cnr", "CNR")):
        head = ["regime", "arm", "seeds", *classes, "mean"]
        lines = [f"{title}:", "| " + " | ".join(head) + " |", "|---|---|---:|" + "---:|" * (len(classes) + 1)]
        for regime in REGIMES:
            for arm in ARMS:
                by_seed = runs.get((regime, arm), {})
                for name, prefix in [(arm, "")] + ([(f"{arm} teacher", "teacher_")] if has_teacher(arm) else []):
                    values = [[r.get(f"{prefix}grounding_{metric}/{c}") for r in by_seed.values()]
                              for c in classes] + [[r.get(f"{prefix}grounding_{metric}") for r in by_seed.values()]]
                    if by_seed and any(v is not None for column in values for v in column):
                        lines.append("| " + " | ".join([regime, name, str(len(by_seed))] +
                                                       [fmt_mean_std(v) for v in values]) + " |")
        if metric == "pointing_game":
            chance = [[r.get(f"grounding_random/{c}") for by_seed in runs.values()
                       for r in by_seed.values()] for c in classes]
            lines.append("| a random grid map | | | " + " | ".join(
                f"{mean_std(v)[0]:.3f}" if mean_std(v)[0] is not None else "–" for v in chance) + " | |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def short(runs, x, y, key="zero_shot_accuracy"):
    """x - y on one metric, in a table cell: "+0.152, beyond 0.053" (the larger standard deviation
    of the two), or the bare difference and the seeds when either side has only one."""
    c = compare(runs, x, y, key)
    if c is not None:
        return f"{c[0]:+.3f}, {'beyond' if c[2] else 'within'} {c[1]:.3f}"
    (mx, _), (my, _) = (mean_std([r.get(key) for r in runs.get(a, {}).values()]) for a in (x, y))
    if mx is None or my is None:
        return "–"
    return f"{mx - my:+.3f} ({min(len(runs[x]), len(runs[y]))} seed)"


def decision_table(runs):
    """What to use, per regime: the default (MSD) unless another arm beats it beyond the spread
    over seeds (a lead the seeds cannot tell from noise, or one seed, does not change a default),
    with its numbers and training minutes (its cost, on the machine the runs name); how it stands
    against the best other arm; MSD against exact CLIP; and MSD's EMA teacher against MSD itself
    ("+" means the teacher is the better model to ship)."""
    head = ["your data", "use", "seeds", "zero-shot acc", "2nd set", "t2i R@10", "train min",
            "against the best other arm", "MSD − exact CLIP", "MSD's teacher − MSD"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for regime, (n, noise) in REGIMES.items():
        cells = {arm: runs[(regime, arm)] for arm in ARMS if runs.get((regime, arm))}
        if not cells:
            continue
        order = sorted(cells, key=lambda a: -mean_std([r.get("zero_shot_accuracy")
                                                       for r in cells[a].values()])[0])
        use = order[0]
        if use != "msd" and "msd" in cells:
            c = compare(cells, use, "msd")
            use = use if c is not None and c[2] else "msd"
        other = next((a for a in order if a != use), None)
        options = f"`{' '.join(ARMS[use][1])}`" if ARMS[use][1] else "the default"
        numbers = [fmt_mean_std([r.get(key) for r in cells[use].values()], digits)
                   for key, digits in (("zero_shot_accuracy", 3), ("second_zero_shot_accuracy", 3),
                                       ("t2i_r10", 3), ("train_min", 1))]
        teacher = {"msd": cells.get("msd", {}),
                   "teacher": {s: {"zero_shot_accuracy": r.get("teacher_zero_shot_accuracy")}
                               for s, r in cells.get("msd", {}).items()}}
        data = f"{n:,} pairs, " + (f"noise {noise}" if noise else "clean")
        lines.append("| " + " | ".join([
            data, f"{use}: {options}", str(len(cells[use])), *numbers,
            f"{other}: {short(cells, use, other)}" if other else "–",
            short(cells, "msd", "clip"), short(teacher, "teacher", "msd")]) + " |")
    return "\n".join(lines)


def comparisons(runs):
    """Per regime, each pair of PAIRS on each key: the difference of means and whether it exceeds
    the larger of the two standard deviations (pairs with at least 2 seeds on both sides)."""
    lines = []
    for regime in REGIMES:
        cells = {arm: runs.get((regime, arm), {}) for arm in ARMS}
        for x, y in PAIRS:
            for key in KEYS:
                c = compare(cells, x, y, key)
                if c is not None:
                    lines.append(f"{regime:12s} {key:26s} {x} - {y}: {said(c)}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--seeds", default="0,1,2", help="comma-separated seeds; every cell runs every seed")
    a("--regimes", default=",".join(REGIMES), help="comma-separated regimes to run")
    a("--arms", default=",".join(ARMS), help="comma-separated arms to run")
    a("--extra", default="", help='more train.py options for every run, e.g. --extra="--device cuda"')
    a("--out-dir", default="results/regimes", help="one folder per run (not committed)")
    a("--json", default="docs/results/regimes.json",
      help="the report: every finished run's numbers, command, commit and machine")
    a("--worker", default="1/1", metavar="I/N",
      help="run only the I-th of every N runs of the study: start N studies, 1/N to N/N, one "
           "per core with OMP_NUM_THREADS=1; they share --json")
    a("--dry-run", action="store_true", help="print the commands; run nothing")
    a("--report", action="store_true", help="print the tables of the runs recorded in --json")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    for name, known in (("regimes", REGIMES), ("arms", ARMS)):
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        unknown = [x for x in chosen if x not in known]
        if unknown:
            p.error(f"--{name}: unknown {unknown}; choose from {','.join(known)}")
        setattr(args, name, chosen)
    args.worker = parse_worker(p, args.worker)
    own = {"--n-train", "--report-noise", "--method", "--accum-steps", "--steps", "--alpha",
           "--duplicate-aware", "--no-duplicate-aware",
           "--seed", "--out", "--resume"}
    clash = sorted({t.split("=")[0] for t in shlex.split(args.extra)} & own)
    if clash:
        p.error(f"--extra may not set {', '.join(clash)}: regimes.py sets them per run")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = {"extra": args.extra, "regimes": {k: list(v) for k, v in REGIMES.items()},
                "arms": {k: list(v[1]) for k, v in ARMS.items()}}
    report = {"settings": settings, "records": {}}
    if os.path.exists(args.json):
        report = read_json(args.json)
        if report["settings"] != settings:
            print(f"error: {args.json} holds runs with other settings ({report['settings']}); give "
                  f"another --json", file=sys.stderr)
            return 2
    elif args.report:
        print(f"error: --report: no report at {args.json}", file=sys.stderr)
        return 2
    if args.report:
        runs = runs_by_cell(report)
        print(f"{len(report['records'])} runs recorded in {args.json}\n\n{format_table(runs)}\n")
        print(f"what to use:\n{decision_table(runs)}\n")
        print(grounding_tables(runs) + "\n")
        print("\n".join(comparisons(runs)) or "(no pair has 2 seeds on both sides yet)")
        return 0
    # seed-major: every cell gets seed 0 before any gets seed 1, so a study cut short still
    # covers every regime
    jobs = [(regime, arm, seed) for seed in args.seeds for regime in args.regimes
            for arm in args.arms]
    if args.worker[1] > 1:
        # every N-th run of the whole list, not of what is left: the share does not depend on when
        # each worker starts, so two never take the same run and none is missed
        i, n = args.worker
        jobs = jobs[i - 1::n]
        left = sum(job_key(*job) not in report["records"] for job in jobs)
        print(f"worker {i} of {n}: {len(jobs)} runs, {left} not yet recorded")
    if args.dry_run:
        for job in jobs:
            print(shlex.join(train_command(*job, args)))
        return 0
    failed = []
    for i, (regime, arm, seed) in enumerate(jobs):
        key, tag = job_key(regime, arm, seed), f"[{i + 1}/{len(jobs)}] {regime} {arm} seed {seed}"
        report = latest(args.json, report)
        if key in report["records"]:
            print(f"{tag}: in {args.json} already (commit {report['records'][key]['commit']})")
            continue
        cmd = train_command(regime, arm, seed, args)
        summary = train_and_evaluate(tag, cmd, run_dir(args.out_dir, regime, arm, seed),
                                     has_teacher(arm))
        if summary is None:
            failed.append(key)
            continue
        report = latest(args.json, report)   # another worker may have recorded runs meanwhile
        report["records"][key] = record(summary, cmd)
        report["table"] = format_table(runs_by_cell(report))
        report["decision_table"] = decision_table(runs_by_cell(report))
        report["grounding_tables"] = grounding_tables(runs_by_cell(report))
        write_json(args.json, report)
    runs = runs_by_cell(report)
    print(f"\n{format_table(runs)}\n\n" + "\n".join(comparisons(runs)))
    if failed:
        print(f"failed: {', '.join(failed)} (see their train.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
