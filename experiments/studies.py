"""What the studies (ablation.py, regimes.py, ladder.py) share.

A study is a list of train.py runs, each exactly what a user would type (`python train.py ...` in
a subprocess), each evaluated twice more by eval.py (on a second, disjoint evaluation set, and with
the EMA teacher's weights when the run has one), and recorded, as soon as it finishes, in a small
committed JSON report with its command, commit, machine and date. A run already in the report is
skipped, an interrupted one continues with --resume: a study can be spread over many sessions, on
machines that keep nothing but the repository. Then mean ± standard deviation over seeds, and
comparisons against the spread.

This file imports neither torch nor the project: on Linux a child's peak resident size (what
train.py logs as peak_mem_mb on the CPU) starts from its parent's, so the parent stays small.
"""

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository

# synthetic.SECOND_EVAL_SEED (this file does not import the project): every run is evaluated on a
# second, disjoint synthetic set too, so an arm that wins on the first must win on images that
# played no part in choosing it.
SECOND_EVAL_SEED = 3003


def second_command(out, python=sys.executable):
    """eval.py on the checkpoint in run folder `out` (the student), on the second evaluation set."""
    return [python, os.path.relpath(os.path.join(ROOT, "eval.py")), "--checkpoint", out,
            "--eval-seed", str(SECOND_EVAL_SEED), "--json", os.path.join(out, "eval_second.json")]


def teacher_command(out, python=sys.executable):
    """eval.py on the checkpoint in `out` with the teacher's weights, the benchmark train.py ran."""
    return [python, os.path.relpath(os.path.join(ROOT, "eval.py")), "--checkpoint", out,
            "--use-teacher", "--json", os.path.join(out, "eval_teacher.json")]


def parse_worker(parser, text):
    """--worker I/N as (I, N): the I-th of N workers that share a study; parser.error otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        parser.error(f"--worker must be I/N, such as 1/2, got {text!r}")
    if not 1 <= i <= n:
        parser.error(f"--worker {text}: I must be between 1 and N")
    return i, n


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
        out = {"zero_shot_accuracy": zs.get("accuracy"), "zero_shot_auc": zs.get("auc"),
               "few_shot_1": fs.get("1"), "few_shot_16": fs.get("16"),
               "i2t_r1": ret.get("i2t_r1"), "i2t_r10": ret.get("i2t_r10"),
               "t2i_r1": ret.get("t2i_r1"), "t2i_r10": ret.get("t2i_r10")}
        # grounding (eval.py): the class means, and each class's pointing game and CNR
        g = res.get("grounding")
        if g:
            for metric in ("pointing_game", "cnr", "signed_cnr", "miou"):
                out[f"grounding_{metric}"] = g["class_mean"][metric]
                for part in ("unlocated", "contrast", "contrast_unlocated", "random_grid", "text_prior",
                             "text_prior_unlocated"):
                    if part in g:
                        out[f"grounding_{part}_{metric}"] = g[part]["class_mean"][metric]
            if "grid_ceiling" in g:
                out["grounding_grid_ceiling_pointing_game"] = g["grid_ceiling"]["class_mean"]["pointing_game"]
            for name, c in g["per_class"].items():
                out[f"grounding_pointing_game/{name}"] = c["pointing_game"]
                out[f"grounding_cnr/{name}"] = c["cnr"]
                out[f"grounding_random/{name}"] = g["random_grid"]["per_class"][name]["pointing_game"]
                if "contrast" in g:
                    out[f"grounding_contrast/{name}"] = g["contrast"]["per_class"][name]["pointing_game"]
        # the bootstrap interval of the test items (eval.py), as scalars so they average over seeds
        ci = res.get("ci95", {})
        for key, part, name in (("zero_shot_accuracy", "zero_shot", "accuracy"),
                                ("t2i_r10", "retrieval", "t2i_r10")):
            if name in ci.get(part, {}):
                out[f"{key}_ci_lo"], out[f"{key}_ci_hi"] = ci[part][name]
        return out
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


def groups_of(named_runs, key):
    """[(group key, runs, who)] of (name, run) pairs grouped by key(name, run), the largest group
    first; `who` names a group's tries (", a, b") unless it holds most of the runs, for the rows of
    a table whose references (a null, a ceiling) differ between groups."""
    groups = {}
    for name, run in named_runs:
        names, runs = groups.setdefault(key(name, run), ([], []))
        names += [name] * (name not in names)
        runs.append(run)
    total = sum(len(runs) for _, runs in groups.values())
    return [(k, runs, "" if 2 * len(runs) > total else ": " + ", ".join(names))
            for k, (names, runs) in sorted(groups.items(), key=lambda kv: -len(kv[1][1]))]


def compare(runs, x, y, key="zero_shot_accuracy"):
    """Arm x against arm y on one metric: (difference of means, the larger of the two standard
    deviations, whether the difference exceeds it). None when either arm has fewer than 2 seeds."""
    (mx, sx), (my, sy) = (mean_std([r.get(key) for r in runs.get(a, {}).values()]) for a in (x, y))
    if sx is None or sy is None:
        return None
    spread = max(sx, sy)
    return mx - my, spread, abs(mx - my) > spread


def said(c, spread="the spread"):
    """compare()'s answer in words: "+0.245 (beyond the spread, 0.071)"."""
    return f"{c[0]:+.3f} ({'beyond' if c[2] else 'within'} {spread}, {c[1]:.3f})"


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


def evaluate_more(out, teacher):
    """The second evaluation set, and the teacher when the run has one, each unless its JSON
    exists. Returns None, or what failed."""
    todo = [("second", second_command)] + ([("teacher", teacher_command)] if teacher else [])
    for name, command in todo:
        if os.path.exists(os.path.join(out, f"eval_{name}.json")):
            continue
        cmd = command(out)
        with open(os.path.join(out, f"eval_{name}.log"), "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                return f"{shlex.join(cmd)}; see {out}/eval_{name}.log"
    return None


def train_and_evaluate(tag, cmd, out, teacher):
    """Run one train.py command (continued with --resume when its folder holds a checkpoint of an
    interrupted run), then eval.py on the second set and on the teacher. Returns the run's summary,
    or None after printing what failed. A folder whose eval.json exists is not trained again."""
    t = time.time()
    if os.path.exists(os.path.join(out, "eval.json")):
        print(f"{tag}: skipped training, {out}/eval.json exists (delete the folder to run it again)")
    else:
        if os.path.exists(os.path.join(out, "ckpt.pt")):
            cmd = cmd + ["--resume"]           # interrupted earlier: continue where it stopped
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
            return None
    failure = evaluate_more(out, teacher)
    if failure:
        print(f"{tag}: FAILED to evaluate the teacher or the second set ({failure})", flush=True)
        return None
    summary = read_run(out)
    teacher_acc = (f", teacher {summary['teacher_zero_shot_accuracy']:.3f}"
                   if summary.get("teacher_zero_shot_accuracy") is not None else "")
    print(f"{tag}: done in {(time.time() - t) / 60:.1f} min: zero-shot accuracy "
          f"{summary['zero_shot_accuracy']:.3f}{teacher_acc}, AUC {summary['zero_shot_auc']:.3f}",
          flush=True)
    return summary


def record(summary, cmd):
    """A finished run as the report keeps it: its numbers, command, commit, machine and date."""
    return {"summary": summary, "command": shlex.join(cmd), "commit": commit(), "machine": machine(),
            "date": datetime.date.today().isoformat()}


def write_json(path, obj):
    """Write atomically: never a torn report, even when killed mid-write."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"     # a name of its own: two workers may write at once
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


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
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
