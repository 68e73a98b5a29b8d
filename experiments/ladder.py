"""What pays? This study climbs a ladder of four arms, each one change from the arm before it.

Every arm runs at its own best recipe, at equal samples and memory (micro-batch b = 32, the default
window N = 2 x 32).

    python -m experiments.ladder --dry-run     # the exact train.py commands of the search, nothing run
    python -m experiments.ladder --report      # the tables so far: search, choice, ladder, robustness
    nice OMP_NUM_THREADS=1 python -m experiments.ladder --worker 1/2 &
    nice OMP_NUM_THREADS=1 python -m experiments.ladder --worker 2/2
    ... --phases final --settings clean,small-noisy --seeds 4   # a slow machine: the cheap runs first

The arms, in ladder order:

    clip       exact CLIP over the window, one-hot positives   --method clip --no-duplicate-aware
    clip-dup   exact CLIP, duplicate-aware positives           --method clip
    msd-a0     MSD with alpha 0: the EMA teacher's features    --alpha 0
               are the bank, the targets are the positives
    msd        MSD: the teacher's soft targets as well         (train.py's defaults)

Three phases, each run recorded in --json as soon as it is done (studies.py: resumable, with its
command, commit, machine and date):

  1. search: every arm at every recipe, learning rate 2.5e-4, 5e-4, 1e-3 by warm-up steps/6 and
     steps/3, on seed 0, in two settings: 20,000 clean pairs and 2,000 pairs with report noise 0.3.
     Each arm's recipe is the one whose worse regret over the two settings is smallest (regret: how
     far the recipe's zero-shot accuracy on the SECOND evaluation set, --eval-seed 3003, falls
     below that arm's best recipe in that setting), so the choice does well in both, not at the
     peak of one. Seed 0 and the second set choose; neither makes a claim.
  2. final: every arm at its chosen recipe on seeds 3, 4 and 5, which no choice has seen, in three
     settings: the two above, and the clean set at 76,800 samples (1,200 steps: is a lead speed
     or final level?).
  3. robust: every arm at each OTHER arm's chosen recipe, seed 3, 20,000 clean pairs: which method
     forgives a schedule that is wrong for it.
  4. default: MSD at the recipe train.py had when the study began (lr 5e-4, warm-up steps/6) on
     seeds 3-5 in the two search settings, beside MSD at its chosen recipe from phase 2: does the
     default's recipe change? (The rule: a recipe replaces it where it wins beyond the bar on both
     evaluation sets in one setting and is not worse beyond the bar in the other.)

A step of the ladder is "beyond" when the difference of means exceeds both the larger standard
deviation over seeds and the mean half-width of the runs' 95% bootstrap intervals over the test
images (eval.py). Workers (--worker I/N) take every N-th run of each phase; a worker that has done
its share of a phase waits for the others (it polls --json) before the next phase.
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

from experiments.studies import (ROOT, fmt_mean_std, mean_std, parse_worker, read_json, record,
                                 train_and_evaluate, write_json)

ARMS = {  # name -> (what it adds to the arm before it, train.py options)
    "clip": ("exact CLIP, one-hot positives", ("--method", "clip", "--no-duplicate-aware")),
    "clip-dup": ("+ duplicate-aware positives", ("--method", "clip")),
    "msd-a0": ("+ the EMA teacher's features as the bank (MSD, alpha 0)", ("--alpha", "0")),
    "msd": ("+ the teacher's soft targets (MSD, the default)", ()),
}
SETTINGS = {  # name -> (training pairs, report noise, steps of 2 x 32)
    "clean": (20000, 0.0, 500),
    "small-noisy": (2000, 0.3, 500),
    "clean-long": (20000, 0.0, 1200),
}
SEARCH_SETTINGS = ("clean", "small-noisy")
LRS = ("2.5e-4", "5e-4", "1e-3")
WARMUP_DIVISORS = (6, 3)                      # warm-up steps = steps / this
RECIPES = [f"lr{lr}-w{d}" for lr in LRS for d in WARMUP_DIVISORS]
SEARCH_SEED, FINAL_SEEDS, ROBUST_SEED, ROBUST_SETTING = 0, (3, 4, 5), 3, "clean"
PHASES = ("search", "final", "robust", "default")
DEFAULT_ARM, DEFAULT_RECIPE = "msd", "lr5e-4-w6"  # train.py's recipe when the study began
CHOICE_KEY = "second_zero_shot_accuracy"     # what chooses a recipe: the second evaluation set


def recipe_options(recipe, steps):
    lr, divisor = recipe[2:].split("-w")
    return ["--lr", lr, "--warmup-steps", str(round(steps / int(divisor)))]


def has_teacher(arm):
    return "--method" not in ARMS[arm][1]


def jobs_of(phase, choice):
    """The phase's runs as (phase, setting, arm, recipe, seed). final and robust need the choice."""
    if phase == "search":
        return [("search", s, arm, r, SEARCH_SEED) for s in SEARCH_SETTINGS for arm in ARMS
                for r in RECIPES]
    if phase == "final":
        return [("final", s, arm, choice[arm], seed) for seed in FINAL_SEEDS for s in SETTINGS
                for arm in ARMS]
    if phase == "default":
        return [("default", s, DEFAULT_ARM, DEFAULT_RECIPE, seed) for seed in FINAL_SEEDS
                for s in SEARCH_SETTINGS]
    others = {arm: sorted({choice[o] for o in ARMS if choice[o] != choice[arm]}) for arm in ARMS}
    return [("robust", ROBUST_SETTING, arm, r, ROBUST_SEED) for arm in ARMS for r in others[arm]]


def job_key(phase, setting, arm, recipe, seed):
    return f"{phase}/{setting}/{arm}/{recipe}-seed{seed}"


def run_dir(out_dir, job):
    phase, setting, arm, recipe, seed = job
    return os.path.join(out_dir, phase, setting, arm, f"{recipe}-seed{seed}")


def train_command(job, args, python=sys.executable):
    _, setting, arm, recipe, seed = job
    n, noise, steps = SETTINGS[setting]
    cmd = [python, os.path.relpath(os.path.join(ROOT, "train.py")), "--n-train", str(n)]
    if noise:
        cmd += ["--report-noise", str(noise)]
    cmd += ["--steps", str(steps), *recipe_options(recipe, steps), *ARMS[arm][1], "--seed", str(seed),
            "--out", run_dir(args.out_dir, job)]
    return cmd + shlex.split(args.extra)


def records_of(report, phase):
    """{(setting, arm, recipe): {seed: summary}} of one phase's recorded runs."""
    out = {}
    for key, rec in report["records"].items():
        p, setting, arm, rest = key.split("/")
        if p == phase:
            recipe, seed = rest.rsplit("-seed", 1)
            out.setdefault((setting, arm, recipe), {})[int(seed)] = rec["summary"]
    return out


def choose(report):
    """{arm: recipe} once every search run is recorded, else None. Per arm: the recipe with the
    smallest worse regret over the search settings (ties: the smaller mean regret, then the earlier
    recipe), regret being the arm's best CHOICE_KEY in that setting minus the recipe's."""
    runs = records_of(report, "search")
    if len(runs) < len(jobs_of("search", None)):
        return None
    choice = {}
    for arm in ARMS:
        score = {r: {s: runs[(s, arm, r)][SEARCH_SEED][CHOICE_KEY] for s in SEARCH_SETTINGS}
                 for r in RECIPES}
        best = {s: max(score[r][s] for r in RECIPES) for s in SEARCH_SETTINGS}
        regret = {r: [best[s] - score[r][s] for s in SEARCH_SETTINGS] for r in RECIPES}
        choice[arm] = min(RECIPES, key=lambda r: (max(regret[r]), sum(regret[r]), RECIPES.index(r)))
    return choice


def search_table(report, choice):
    """Per arm and recipe: zero-shot accuracy on the second set (what chooses) in each setting,
    the first set in brackets; * marks the chosen recipe."""
    runs = records_of(report, "search")
    head = ["arm"] + [f"{r.replace('lr', 'lr ').replace('-w', ', steps/')}" for r in RECIPES]
    lines = [f"zero-shot accuracy, seed {SEARCH_SEED}: 2nd set (1st set), "
             + " / ".join(SEARCH_SETTINGS), "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * len(RECIPES)]
    for arm in ARMS:
        cells = [arm]
        for r in RECIPES:
            parts = []
            for s in SEARCH_SETTINGS:
                got = runs.get((s, arm, r), {}).get(SEARCH_SEED)
                parts.append("–" if got is None else
                             f"{got[CHOICE_KEY]:.3f} ({got['zero_shot_accuracy']:.3f})")
            mark = " *" if choice and choice[arm] == r else ""
            cells.append(" / ".join(parts) + mark)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_half(summary, key="zero_shot_accuracy"):
    lo, hi = summary.get(f"{key}_ci_lo"), summary.get(f"{key}_ci_hi")
    return None if lo is None or hi is None else (hi - lo) / 2


def step_up(upper, lower, key):
    """upper - lower on one metric over seeds: "+0.012, within 0.030" where 0.030 is the larger of
    the standard deviations and of the mean bootstrap half-widths; "beyond" needs both exceeded."""
    (mu, su), (ml, sl) = (mean_std([r.get(key) for r in x.values()]) for x in (upper, lower))
    if mu is None or ml is None:
        return "–"
    halves = [ci_half(r, key) for x in (upper, lower) for r in x.values()]
    ci = mean_std(halves)[0]
    if su is None or sl is None:
        return f"{mu - ml:+.3f} (1 seed)"
    bar = max(su, sl, ci or 0.0)
    return f"{mu - ml:+.3f}, {'beyond' if abs(mu - ml) > bar else 'within'} {bar:.3f}"


def ladder_table(report, choice):
    """The final phase: per setting, one row per arm at its recipe, and each step against the row
    above it on zero-shot accuracy (first set) and t2i R@10."""
    head = ["setting", "arm", "recipe", "seeds", "zero-shot acc", "2nd set", "t2i R@10",
            "step: zero-shot", "step: t2i R@10", "teacher zero-shot"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for setting, arm, cell, previous, nums in ladder_rows(report, choice, SETTINGS):
        steps = ([step_up(cell, previous, k) for k in ("zero_shot_accuracy", "t2i_r10")]
                 if previous else ["", ""])
        teacher = (fmt_mean_std([r.get("teacher_zero_shot_accuracy") for r in cell.values()])
                   if has_teacher(arm) else "")
        lines.append("| " + " | ".join([setting, arm, choice[arm], str(len(cell)), *nums, *steps,
                                        teacher]) + " |")
    return "\n".join(lines)


def ladder_rows(report, choice, settings):
    """The final phase's cells in ladder order: (setting, arm, {seed: summary}, the row above's
    cell or None, [zero-shot, 2nd set, t2i R@10] as mean ± sd), arms with no run left out."""
    runs = records_of(report, "final")
    for setting in settings:
        previous = None
        for arm in ARMS:
            cell = runs.get((setting, arm, choice[arm]), {}) if choice else {}
            if not cell:
                previous = None
                continue
            nums = [fmt_mean_std([r.get(k) for r in cell.values()])
                    for k in ("zero_shot_accuracy", "second_zero_shot_accuracy", "t2i_r10")]
            yield setting, arm, cell, previous, nums
            previous = cell


README_ARMS = {"clip": "exact CLIP, one-hot", "clip-dup": "+ duplicate-aware positives",
               "msd-a0": "+ teacher's bank (`--alpha 0`)", "msd": "+ soft targets (MSD)"}
README_SETTINGS = {"clean": "20,000 clean", "small-noisy": "2,000, noise 0.3",
                   "clean-long": "20,000 clean, 76,800 samples"}


def readme_table(report, choice, settings=SEARCH_SETTINGS):
    """The README's short ladder: per setting, each arm at its recipe, zero-shot accuracy on both
    sets, t2i R@10 and the step up from the row above on zero-shot accuracy."""
    lines = ["| data | arm: what it adds | recipe | seeds | zero-shot acc (2nd set) | t2i R@10 | "
             "step: zero-shot |", "|---|---|---|---:|---:|---:|---:|"]
    for setting, arm, cell, previous, nums in ladder_rows(report, choice, settings):
        step = step_up(cell, previous, "zero_shot_accuracy") if previous else ""
        recipe = choice[arm][2:].replace("-w", ", steps/")
        lines.append(f"| {README_SETTINGS[setting] if arm == 'clip' else ''} | {README_ARMS[arm]} | "
                     f"{recipe} | {len(cell)} | {nums[0]} ({nums[1]}) | {nums[2]} | {step} |")
    return "\n".join(lines)


def robust_table(report, choice):
    """Seed ROBUST_SEED, ROBUST_SETTING: every arm at every arm's chosen recipe (its own from the
    final phase), zero-shot accuracy on the first set."""
    if not choice:
        return ""
    recipes = sorted(set(choice.values()), key=RECIPES.index)
    robust, final = records_of(report, "robust"), records_of(report, "final")
    lines = [f"seed {ROBUST_SEED}, {ROBUST_SETTING}: zero-shot accuracy at each chosen recipe "
             "(* its own)", "| arm | " + " | ".join(recipes) + " |", "|---|" + "---:|" * len(recipes)]
    for arm in ARMS:
        cells = []
        for r in recipes:
            source = final if r == choice[arm] else robust
            got = source.get((ROBUST_SETTING, arm, r), {}).get(ROBUST_SEED)
            cells.append("–" if got is None else
                         f"{got['zero_shot_accuracy']:.3f}{' *' if r == choice[arm] else ''}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_table(report, choice):
    """Phase 4: per search setting, MSD at the old default recipe against MSD at its chosen recipe
    (seeds FINAL_SEEDS both), and the step from the one to the other on both evaluation sets."""
    if not choice:
        return ""
    default, final = records_of(report, "default"), records_of(report, "final")
    chosen = choice[DEFAULT_ARM]
    keys = ("zero_shot_accuracy", "second_zero_shot_accuracy", "t2i_r10")
    lines = [f"{DEFAULT_ARM}: the old default's recipe ({DEFAULT_RECIPE}) against the chosen one "
             f"({chosen}), seeds {', '.join(map(str, FINAL_SEEDS))}",
             "| setting | recipe | seeds | zero-shot acc | 2nd set | t2i R@10 |",
             "|---|---|---:|---:|---:|---:|"]
    for setting in SEARCH_SETTINGS:
        old = default.get((setting, DEFAULT_ARM, DEFAULT_RECIPE), {})
        new = final.get((setting, DEFAULT_ARM, chosen), {})
        for label, cell in ((f"{DEFAULT_RECIPE} (old default)", old), (f"{chosen} (chosen)", new)):
            if cell:
                nums = [fmt_mean_std([x.get(k) for x in cell.values()]) for k in keys]
                lines.append(f"| {setting} | {label} | {len(cell)} | " + " | ".join(nums) + " |")
        if old and new:
            steps = [step_up(new, old, k) for k in keys]
            lines.append(f"| {setting} | chosen − old default | | " + " | ".join(steps) + " |")
    return "\n".join(lines)


def report_text(report):
    choice = choose(report)
    said = ", ".join(f"{a}: {r}" for a, r in choice.items()) if choice else "(search not complete)"
    return "\n\n".join([f"{len(report['records'])} runs recorded", search_table(report, choice),
                        f"chosen: {said}", ladder_table(report, choice), robust_table(report, choice),
                        default_table(report, choice),
                        "the README's table:\n" + readme_table(report, choice)])


def commit_report(path, message):
    """git add and commit the report alone (--only: nothing else staged goes with it). Two workers
    may commit at once; git's index lock makes one of them wait and retry."""
    folder = os.path.dirname(os.path.abspath(path))
    for attempt in range(5):
        add = subprocess.run(["git", "add", "--", os.path.basename(path)], cwd=folder,
                             capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", os.path.basename(path)], cwd=folder,
            capture_output=True, text=True)
        if done and done.returncode == 0:
            return True
        time.sleep(2 + 3 * attempt)
    err = (done.stderr if done else add.stderr).strip()
    print(f"warning: could not commit {path} ({err}); it is written, commit it by hand", flush=True)
    return False


def settings_of(args):
    return {"extra": args.extra, "arms": {k: list(v[1]) for k, v in ARMS.items()},
            "settings": {k: list(v) for k, v in SETTINGS.items()}, "recipes": RECIPES,
            "seeds": {"search": SEARCH_SEED, "final": list(FINAL_SEEDS), "robust": ROBUST_SEED}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--phases", default=",".join(PHASES), help="comma-separated phases to run, in this order")
    a("--settings", default=None, help="comma-separated: run only these settings' runs (a slow "
      "machine can take the cheap settings first; the report is the same)")
    a("--seeds", default=None, help="comma-separated: run only these seeds' runs")
    a("--extra", default="", help='more train.py options for every run, e.g. --extra="--device cuda"')
    a("--out-dir", default="results/ladder", help="one folder per run (not committed)")
    a("--json", default="docs/results/ladder.json", help="the report: every finished run")
    a("--worker", default="1/1", metavar="I/N", help="run only every N-th run of each phase, from "
      "the I-th: start N workers, one per core with OMP_NUM_THREADS=1; they share --json")
    a("--commit", action="store_true", help="git commit --json after each recorded run")
    a("--poll", type=float, default=60.0, help="seconds between looks at --json while waiting "
      "for other workers to finish a phase")
    a("--dry-run", action="store_true", help="print the commands of the phases that can start")
    a("--report", action="store_true", help="print the tables of the runs recorded in --json")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if args.settings is not None:
        args.settings = [x.strip() for x in args.settings.split(",") if x.strip()]
        unknown = [x for x in args.settings if x not in SETTINGS]
        if unknown:
            p.error(f"--settings: unknown {unknown}; choose from {','.join(SETTINGS)}")
    if args.seeds is not None:
        try:
            args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            p.error(f"--seeds must be comma-separated integers, such as 4,5, got {args.seeds!r}")
    unknown = [x for x in args.phases if x not in PHASES]
    if unknown:
        p.error(f"--phases: unknown {unknown}; choose from {','.join(PHASES)}")
    args.worker = parse_worker(p, args.worker)
    own = {"--n-train", "--report-noise", "--steps", "--lr", "--warmup-steps", "--method", "--alpha",
           "--duplicate-aware", "--no-duplicate-aware", "--seed", "--out", "--resume"}
    clash = sorted({t.split("=")[0] for t in shlex.split(args.extra)} & own)
    if clash:
        p.error(f"--extra may not set {', '.join(clash)}: ladder.py sets them per run")
    return args


def wait_for_choice(args, report):
    """The recipes, once every search run is in --json (written by any worker)."""
    said = False
    while True:
        report = read_json(args.json) if os.path.exists(args.json) else report
        choice = choose(report)
        if choice or args.dry_run:
            return choice, report
        if not said:
            left = len(jobs_of("search", None)) - len(records_of(report, "search"))
            print(f"waiting for {left} search run(s) of the other workers before the next phase "
                  f"(looking at {args.json} every {args.poll:g} s)", flush=True)
            said = True
        time.sleep(args.poll)


def main(argv=None):
    args = parse_args(argv)
    report = {"settings": settings_of(args), "records": {}}
    if os.path.exists(args.json):
        report = read_json(args.json)
        if report["settings"] != settings_of(args):
            print(f"error: {args.json} holds runs with other settings; give another --json",
                  file=sys.stderr)
            return 2
    elif args.report:
        print(f"error: --report: no report at {args.json}", file=sys.stderr)
        return 2
    if args.report:
        print(report_text(report))
        return 0
    i, n = args.worker
    failed = []
    for phase in args.phases:
        choice = None
        if phase != "search":
            if failed:
                break                       # the choice would wait for runs that failed here
            choice, report = wait_for_choice(args, report)
            if choice is None:
                print(f"{phase}: the search is not complete; nothing to print yet")
                break
        jobs = [job for job in jobs_of(phase, choice)
                if (args.settings is None or job[1] in args.settings)
                and (args.seeds is None or job[4] in args.seeds)][i - 1::n]
        left = sum(job_key(*job) not in report["records"] for job in jobs)
        print(f"{phase}: worker {i} of {n}: {len(jobs)} runs, {left} not yet recorded", flush=True)
        for j, job in enumerate(jobs):
            cmd = train_command(job, args)
            if args.dry_run:
                print(shlex.join(cmd))
                continue
            key, tag = job_key(*job), f"[{phase} {j + 1}/{len(jobs)}] {job_key(*job)}"
            report = read_json(args.json) if os.path.exists(args.json) else report
            if key in report["records"]:
                print(f"{tag}: in {args.json} already (commit {report['records'][key]['commit']})")
                continue
            summary = train_and_evaluate(tag, cmd, run_dir(args.out_dir, job), has_teacher(job[2]))
            if summary is None:
                failed.append(key)
                continue
            report = read_json(args.json) if os.path.exists(args.json) else report
            report["records"][key] = record(summary, cmd)
            report["tables"] = report_text(report)
            write_json(args.json, report)
            if args.commit:
                commit_report(args.json, f"Ladder study: {key} recorded "
                                         f"({len(report['records'])} runs so far)")
    if failed:
        print(f"failed: {', '.join(failed)} (see their train.log)")
        return 1
    if not args.dry_run:
        print(report_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
