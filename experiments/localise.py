"""Does the model look where the finding is? Each try is one change to the default model.

Every try runs at the default budget (train.py's defaults: 500 steps of 2 x 32 pairs) on seeds 0,
1 and 2, at learning rate 5e-4: train.py's default when the study ran (2.5e-4 since the ladder study,
experiments/ladder.py), pinned so that every try stays one change from the same model.

    python -m experiments.localise --dry-run          # the train.py commands, nothing run
    python -m experiments.localise --report           # the table of the runs recorded so far
    nice OMP_NUM_THREADS=1 python -m experiments.localise --tries msd,mean,registers --commit

The tries (train.py options):

    msd         the default model (max pooling); its map is each patch's share of the score
    mean        --pool mean: the image vector is the mean of the patches (BioViL's), so a patch's
                share of the score is its own projected state against the text
    registers   --registers 4: four tokens that attention can keep global information in and
                that no pooling reads (Darcet et al. 2024)
    window3     --attention-window 3: a patch attends to its 8 neighbours alone, so a finding's
                evidence spreads one patch per layer rather than anywhere at once
    window1     --attention-window 1: no mixing at all; each patch's state is its own (after the
                convolutional stem), so only the patches of the finding can carry its evidence
    words       --word-patch 1: MSD plus a word-patch alignment term (loss.word_patch_loss, FILIP's
                token-wise similarity, as GLoRIA aligns words with regions) within each
                micro-batch, at weight 1; the map is still the global score's decomposition
    words0.1    --word-patch 0.1: the same term at a tenth of the weight (at 1 it cost the model
                0.4 zero-shot accuracy)
    clip        exact CLIP with duplicate-aware positives (the ladder's clip-dup, one change from
                MSD at alpha 0) at the recipe experiments/ladder.py chose for it: it runs once
                docs/results/ladder.json holds the whole search
    msd-ladder  the default model at the recipe the ladder chose for MSD (lr 2.5e-4, warm-up
                steps/6: train.py's default since), so that MSD and CLIP meet at their own recipes
    mean-ladder --pool mean at that recipe: mean pooling localised best at lr 5e-4 but trained a
                far worse model there; does the gentler rate that helped MSD help it too?
    attn        --pool attn at that recipe: a learned weighted mean of the patches (attention-based
                multiple-instance pooling), which can weigh a small finding above the healthy
                patches where the plain mean dilutes it; the map is still the score's exact split
    attn-window3  --pool attn --attention-window 3 at that recipe: the same, with a finding's
                evidence kept near it (window3 alone localised little with max pooling)
    size128     --image-size 128 at that recipe: the default model on a 16 x 16 patch grid. No
                map on the 8 x 8 grid can point at a 2-5 px nodule (evaluation.grounding's
                grid_ceiling: 0.812 at 64 px, 0.968 at 128); four times the tokens, the same samples
    patch4      --patch-size 4 at that recipe: the same 16 x 16 grid on the default's 64 px images
                (a conv stem of two halvings, not three), so a finer grid without finer pixels
    shift-phase --augment-shift 0.0625 at that recipe: shifts up to half a patch (4 px at 64), so
                the grid meets the anatomy at every phase, and the shifted readout
                (experiments/contrast_maps.py) reads the model at views it was trained on

Each run is scored by eval.py as train.py writes it (eval.json: the maps of the report's sentences
and of the sentences that name no place, beside random grid maps and the text-only prior), on the
second evaluation set (eval_second.json) and with the teacher's weights (eval_teacher.json), and
recorded in --json with its command, commit, machine and date as soon as it finishes
(experiments/studies.py: resumable over sessions). docs/experiments.md, "Maps that land on the
finding", reads the table.
"""

import argparse
import os
import shlex
import subprocess
import sys

from experiments import ladder
from experiments.studies import (ROOT, evaluate_more, fmt_mean_std, groups_of, mean_std, parse_worker, read_json,
                                 read_run, record, train_and_evaluate, write_json)

TRIES = {  # name -> train.py options (the LADDER_TRIES take their recipe from the ladder)
    "msd": (),
    "mean": ("--pool", "mean"),
    "registers": ("--registers", "4"),
    "window3": ("--attention-window", "3"),
    "window1": ("--attention-window", "1"),
    "words": ("--word-patch", "1"),
    "words0.1": ("--word-patch", "0.1"),
    "clip": ladder.ARMS["clip-dup"][1],
    "msd-ladder": ladder.ARMS["msd"][1],
    "mean-ladder": ("--pool", "mean"),
    "attn": ("--pool", "attn"),
    "attn-window3": ("--pool", "attn", "--attention-window", "3"),
    "size128": ("--image-size", "128"),
    "patch4": ("--patch-size", "4"),
    "shift-phase": ("--augment-shift", "0.0625"),
}
# try -> the ladder arm whose chosen recipe it runs at; every other try runs at STUDY_LR
LADDER_TRIES = {"clip": "clip-dup", "msd-ladder": "msd", "mean-ladder": "msd", "attn": "msd",
                "attn-window3": "msd", "size128": "msd", "patch4": "msd",
                "shift-phase": "msd"}
SEEDS = (0, 1, 2)
DEFAULT_STEPS = 500
COLUMNS = [  # (summary key, heading)
    ("grounding_pointing_game", "pointing game"),
    ("grounding_unlocated_pointing_game", "pointing game, no place"),
    ("grounding_signed_cnr", "signed CNR"),
    ("grounding_unlocated_signed_cnr", "signed CNR, no place"),
    ("zero_shot_accuracy", "zero-shot"),
    ("second_zero_shot_accuracy", "2nd set"),
    ("t2i_r10", "t2i R@10"),
    ("grounding_contrast_pointing_game", "contrast map"),
]


def ladder_recipes(ladder_json):
    """{try: the ladder's chosen recipe for its arm as train.py options}, or {} before the ladder's
    search ends."""
    if not os.path.exists(ladder_json):
        return {}
    choice = ladder.choose(read_json(ladder_json))
    if not choice:
        return {}
    return {name: ladder.recipe_options(choice[arm], DEFAULT_STEPS) for name, arm in LADDER_TRIES.items()}


STUDY_LR = ("--lr", "5e-4")  # train.py's default learning rate when the tries ran


def train_command(name, seed, args, python=sys.executable):
    cmd = [python, os.path.relpath(os.path.join(ROOT, "train.py")), *TRIES[name]]
    cmd += args.ladder_recipes[name] if name in LADDER_TRIES else STUDY_LR
    return cmd + ["--seed", str(seed), "--out", os.path.join(args.out_dir, name, f"seed{seed}")]


def table(report):
    """One row per try: mean ± sd over its seeds of each COLUMNS metric, the teacher's pointing
    game, and a last row of what maps that ignore the image score (the same on every run)."""
    runs = {}
    for key, rec in report["records"].items():
        name, seed = key.split("/seed")
        runs.setdefault(name, {})[int(seed)] = rec["summary"]
    head = ["try", "seeds"] + [h for _, h in COLUMNS] + ["teacher pointing game"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for name in TRIES:
        by_seed = runs.get(name)
        if not by_seed:
            continue
        cells = [fmt_mean_std([s.get(k) for s in by_seed.values()]) for k, _ in COLUMNS]
        cells.append(fmt_mean_std([s.get("teacher_grounding_pointing_game") for s in by_seed.values()]))
        lines.append("| " + " | ".join([name, str(len(by_seed))] + cells) + " |")
    # the nulls depend on the image and the patch grid: a pair of rows per (image, patch) in the runs
    groups = groups_of([(key.split("/seed")[0], rec) for key, rec in report["records"].items()],
                       lambda name, rec: image_and_patch(rec.get("command", "")))
    for (image, patch), recs, who in groups:
        which = "" if len(groups) == 1 else f" ({image} px, {image // patch}x{image // patch}{who})"
        for label, part in (("a random grid map", "random_grid"), ("the text-only prior", "text_prior")):
            cells = []
            for key, _ in COLUMNS:
                if not key.startswith("grounding_"):
                    cells.append("")
                    continue
                metric = key.replace("grounding_unlocated_", "").replace("grounding_contrast_", "")
                metric = metric.replace("grounding_", "")       # the nulls are the same for either map
                where = part + ("_unlocated" if "unlocated" in key and part == "text_prior" else "")
                mean, _ = mean_std([r["summary"].get(f"grounding_{where}_{metric}") for r in recs])
                cells.append("–" if mean is None else f"{mean:.3f}")
            lines.append("| " + " | ".join([label + which, ""] + cells + [""]) + " |")
    return "\n".join(lines)


def image_and_patch(command):
    """(image side, patch side) of a recorded train.py command: its --image-size and --patch-size,
    else the tiny preset's 64 and 8."""
    words, found = shlex.split(command), {"--image-size": 64, "--patch-size": 8}
    for option in found:
        if option in words[:-1]:
            found[option] = int(words[words.index(option) + 1])
    return found["--image-size"], found["--patch-size"]


def re_evaluate(key, out, teacher, rec):
    """A recorded run scored again by today's eval.py (when the evaluation changed, not the
    training): its eval.json, eval_second.json and eval_teacher.json are rewritten from its
    checkpoint. Returns the new record (its commit: the evaluation's; "trained_at": the run's)."""
    for name in ("eval", "eval_second", "eval_teacher"):
        path = os.path.join(out, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
    cmd = [sys.executable, os.path.relpath(os.path.join(ROOT, "eval.py")), "--checkpoint", out,
           "--json", os.path.join(out, "eval.json")]
    with open(os.path.join(out, "eval_first.log"), "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            return None
    if evaluate_more(out, teacher):
        return None
    print(f"{key}: evaluated again", flush=True)
    return {**record(read_run(out), shlex.split(rec["command"])),
            "trained_at": rec.get("trained_at", rec["commit"])}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--tries", default=",".join(TRIES), help="comma-separated tries to run, in order")
    a("--out-dir", default="results/localise", help="one folder per run (not committed)")
    a("--json", default="docs/results/localise.json", help="the report: every finished run")
    a("--ladder-json", default="docs/results/ladder.json", help="where the LADDER_TRIES' recipes come from")
    a("--worker", default="1/1", metavar="I/N", help="run every N-th run from the I-th")
    a("--commit", action="store_true", help="git commit --json after each recorded run")
    a("--dry-run", action="store_true", help="print the train.py commands, run nothing")
    a("--report", action="store_true", help="print the table of the runs recorded in --json")
    a("--re-evaluate", action="store_true", help="score the recorded runs again with today's "
      "eval.py, from their checkpoints in --out-dir (after a change to the evaluation)")
    args = p.parse_args(argv)
    args.tries = [x.strip() for x in args.tries.split(",") if x.strip()]
    unknown = [x for x in args.tries if x not in TRIES]
    if unknown:
        p.error(f"--tries: unknown {unknown}; choose from {','.join(TRIES)}")
    args.worker = parse_worker(p, args.worker)
    args.ladder_recipes = ladder_recipes(args.ladder_json)
    return args


def main(argv=None):
    args = parse_args(argv)
    report = read_json(args.json) if os.path.exists(args.json) else {"records": {}}
    if args.report:
        print(table(report))
        return 0
    for name in [x for x in args.tries if x in LADDER_TRIES and x not in args.ladder_recipes]:
        print(f"{name}: skipped, {args.ladder_json} has not chosen {LADDER_TRIES[name]}'s recipe yet "
              f"(its search is not complete)", flush=True)
        args.tries.remove(name)
    # seed by seed: every try's first seed lands before any try's third
    jobs = [(name, seed) for seed in SEEDS for name in args.tries][args.worker[0] - 1::args.worker[1]]
    failed = []
    for name, seed in jobs:
        cmd, key = train_command(name, seed, args), f"{name}/seed{seed}"
        if args.dry_run:
            print(shlex.join(cmd))
            continue
        report = read_json(args.json) if os.path.exists(args.json) else report
        out = os.path.join(args.out_dir, name, f"seed{seed}")
        teacher = ladder.has_teacher(LADDER_TRIES.get(name, "msd"))
        if key in report["records"] and not args.re_evaluate:
            print(f"{key}: in {args.json} already (commit {report['records'][key]['commit']})")
            continue
        if args.re_evaluate:
            if key not in report["records"]:
                continue                   # not trained yet: nothing to score again
            new = re_evaluate(key, out, teacher, report["records"][key])
        else:
            summary = train_and_evaluate(key, cmd, out, teacher)
            new = None if summary is None else record(summary, cmd)
        if new is None:
            failed.append(key)
            continue
        report = read_json(args.json) if os.path.exists(args.json) else report
        report["records"][key] = new
        report["table"] = table(report)
        write_json(args.json, report)
        if args.commit:
            ladder.commit_report(args.json, f"Localisation study: {key} recorded "
                                            f"({len(report['records'])} runs so far)")
    if failed:
        print(f"failed: {', '.join(failed)} (see their train.log)")
        return 1
    if not args.dry_run:
        print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
