"""ablation.py: its commands (the same samples, warm-ups and teacher horizon in every arm, each
remedy one change from arm e), the arithmetic on hand-made finished runs (mean ± spread, the table,
the comparisons), the report that records, skips and prints runs, and the committed report read
as it is. fake_eval, fake_metrics and finished_run make finished runs for the other studies'
tests too (test_regimes.py, test_ladder.py)."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from experiments import ablation
from experiments import studies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    """python -m MODULE ARGS from the repository's root, as the README runs the studies."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def option(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def fake_eval(acc):
    return {"zero_shot": {"accuracy": acc, "auc": acc + 0.2},
            "few_shot": {"1": 0.6, "2": 0.7, "16": 0.9},
            "retrieval": {"i2t_r1": 0.1, "i2t_r5": 0.3, "i2t_r10": 0.5,
                          "t2i_r1": 0.2, "t2i_r5": 0.4, "t2i_r10": acc}}


def fake_metrics(peak, elapsed):
    return [{"step": 10, "loss": 1.0, "peak_mem_mb": peak / 2, "elapsed_s": elapsed / 2},
            {"step": 20, "zero_shot_accuracy": 0.3, "zero_shot_auc": 0.6},
            {"step": 20, "loss": 0.9, "peak_mem_mb": peak, "elapsed_s": elapsed}]


def finished_run(folder, acc, teacher_acc=None):
    """A run folder as train.py and eval.py leave it: the student's accuracy acc on the first set,
    acc + 0.01 on the second, and teacher_acc for the teacher's weights when given."""
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(fake_eval(acc)))
    (folder / "eval_second.json").write_text(json.dumps(fake_eval(acc + 0.01)))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fake_metrics(300, 120)))
    if teacher_acc is not None:
        (folder / "eval_teacher.json").write_text(json.dumps(fake_eval(teacher_acc)))


def check_help_opens_with_a_full_sentence(module, parse_args, capsys):
    """--help opens with the docstring's first paragraph, one line that ends a sentence (so that the
    description is never cut mid-sentence)."""
    first = module.__doc__.split("\n\n")[0]
    assert "\n" not in first and first.endswith((".", "?")), first
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert first in " ".join(capsys.readouterr().out.split())


def test_help_opens_with_a_full_sentence(capsys):
    check_help_opens_with_a_full_sentence(ablation, ablation.parse_args, capsys)


def test_dry_run_every_arm_sees_the_same_samples_warm_ups_and_teacher_horizon():
    proc = run_module("experiments.ablation", "--dry-run", "--seeds", "0,1", "--batch-size", "8",
                      "--accum-steps", "4", "--steps", "30", "--only", ",".join(ablation.ARMS),
                      "--extra=--image-size 32")
    lines = [shlex.split(line) for line in proc.stdout.splitlines() if ".py" in line and "--" in line]
    cmds = [c for c in lines if c[1].endswith("train.py")]
    n_arms = len(ablation.ARMS)
    assert len(cmds) == 2 * n_arms
    for seed in (0, 1):
        arms = [c for c in cmds if option(c, "--seed") == str(seed)]
        assert len(arms) == n_arms
        for c in arms:                                   # every option once: no silent override
            names = [t for t in c if t.startswith("--")]
            assert len(names) == len(set(names)), c
        samples = {int(option(c, "--steps")) * int(option(c, "--batch-size")) *
                   int(option(c, "--accum-steps")) for c in arms}
        assert samples == {30 * 4 * 8}
        # warm-ups over the same number of samples in every arm
        warm = {int(option(c, "--warmup-steps")) * int(option(c, "--batch-size")) *
                int(option(c, "--accum-steps")) for c in arms}
        assert len(warm) == 1
        by_arm = {os.path.basename(option(c, "--out")).split("-")[0]: c for c in arms}
        # the teacher averages over the same number of samples: m^steps is the same (arms d, e, f)
        horizons = {round(float(option(by_arm[a], "--momentum")) ** int(option(by_arm[a], "--steps")), 4)
                    for a in "def"}
        assert len(horizons) == 1
        assert [a for a in by_arm if option(by_arm[a], "--alpha") == "0"] == ["d"]
        assert all(option(c, "--eval-every") == "0" and option(c, "--image-size") == "32" for c in arms)
        # the remedies: each differs from arm e by its own options only
        assert option(by_arm["q"], "--queue-start") == "5"                  # S/6 of 30 steps
        # the other teacher arms have the queue from step 0, whatever train.py's default is
        assert all(option(by_arm[a], "--queue-start") == "0" for a in "defhmw")
        # and every teacher arm the study's queue (auto: 2048 here), whatever train.py's default is
        assert all(option(by_arm[a], "--queue-size") == "auto" for a in "defhmwq")
        assert option(by_arm["h"], "--momentum-half-life") == "0.05"
        assert (option(by_arm["m"], "--momentum-schedule"), option(by_arm["m"], "--momentum")) == ("cosine", "0.99")
        assert option(by_arm["w"], "--alpha-warmup") == "15"                # S/2
        for arm in "qhmw":
            differ = {n for n in set(by_arm[arm]) | set(by_arm["e"]) if n.startswith("--")
                      and option(by_arm[arm], n) != option(by_arm["e"], n)}
            assert differ == {"--out"} | set(ablation.ARMS[arm][5][::2]), arm
    # the three CLIP arms at k×b: one batch of k·b, naive accumulation, exact accumulation
    by_run = {os.path.basename(option(c, "--out")): c for c in cmds}
    shape = lambda c: (option(c, "--method"), option(c, "--batch-size"), option(c, "--accum-steps"))  # noqa: E731
    assert shape(by_run["b-seed0"]) == ("clip", "32", "1")
    assert shape(by_run["c-seed0"]) == ("clip-naive", "8", "4")
    assert shape(by_run["g-seed0"]) == ("clip", "8", "4")
    # the arms with a teacher are evaluated with its weights too, on their own checkpoint
    teachers = [c for c in lines if c[1].endswith("eval.py") and "--use-teacher" in c]
    assert {option(c, "--checkpoint") for c in teachers} == \
        {option(c, "--out") for c in cmds if option(c, "--method") == "msd"}
    # and every run's student on the second evaluation set, synthetic.py's SECOND_EVAL_SEED
    from synthetic import dataset as synthetic
    seconds = [c for c in lines if c[1].endswith("eval.py") and "--use-teacher" not in c]
    assert sorted(option(c, "--checkpoint") for c in seconds) == sorted(option(c, "--out") for c in cmds)
    assert {option(c, "--eval-seed") for c in seconds} == {str(synthetic.SECOND_EVAL_SEED)}


def test_extra_may_not_change_what_the_arms_compare():
    proc = run_module("experiments.ablation", "--dry-run", "--extra=--steps 5")
    assert proc.returncode == 2 and "--steps" in proc.stderr


def test_mean_std_and_format():
    assert studies.mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert studies.mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert studies.mean_std([None, 0.4]) == (0.4, None)
    assert studies.mean_std([]) == (None, None)
    assert studies.fmt_mean_std([0.5, 0.6, 0.7]) == "0.600 ± 0.100"
    assert studies.fmt_mean_std([0.5]) == "0.500"
    assert studies.fmt_mean_std([None]) == "–"
    assert studies.fmt_mean_std([1000.4, 1100.2, 1200.0], digits=0) == "1100 ± 100"


def test_summaries_aggregate_table_and_comparison():
    runs = {"e": {s: studies.summarise_run(fake_eval(acc), fake_metrics(peak, sec), fake_eval(acc + 0.1),
                                            fake_eval(acc + 0.05))
                  for s, acc, peak, sec in ((0, 0.5, 300, 120), (1, 0.6, 400, 180), (2, 0.7, 500, 240))},
            "b": {0: studies.summarise_run(fake_eval(0.4), fake_metrics(900, 60))}}
    assert runs["e"][0]["peak_mem_mb"] == 300 and runs["e"][0]["train_min"] == pytest.approx(2.0)
    assert runs["e"][0]["teacher_zero_shot_accuracy"] == pytest.approx(0.6)
    assert "teacher_zero_shot_accuracy" not in runs["b"][0]
    agg = studies.aggregate(runs)
    assert agg["e"]["zero_shot_accuracy"] == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    assert agg["e"]["teacher_zero_shot_accuracy"] == pytest.approx({"mean": 0.7, "std": 0.1, "n": 3})
    assert agg["b"]["peak_mem_mb"] == {"mean": 900, "std": None, "n": 1}
    table = ablation.format_table(runs, ["b", "e", "f"], b=16, k=8)
    lines = table.splitlines()
    row_e = next(line for line in lines if line.startswith("| e |"))
    assert row_e == ("| e | MSD, k×b, queue from step 0 | 16 × 8 | 3 | 0.600 ± 0.100 | 0.800 ± 0.100 | 0.600 ± 0.000 "
                     "| 0.900 ± 0.000 | 0.100 ± 0.000 | 0.500 ± 0.000 | 0.200 ± 0.000 "
                     "| 0.600 ± 0.100 | 0.650 ± 0.100 | 400 ± 100 | 3.0 ± 1.0 |")
    row_t = next(line for line in lines if line.startswith("| e (teacher) |"))
    assert row_t.startswith("| e (teacher) | its EMA weights | 16 × 8 | 3 | 0.700 ± 0.100 | 0.900 ± 0.100 |")
    assert row_t.endswith("| – |  |  |")      # memory and time are the run's, on its own row; 2nd set: student
    assert next(line for line in lines if line.startswith("| b |")).startswith(
        "| b | CLIP, batch k·b | 128 × 1 | 1 | 0.400 |")
    assert not any(line.startswith("| b (teacher)") for line in lines)
    assert next(line for line in lines if line.startswith("| f |")).count("–") == 11   # not run
    assert len({line.count("|") for line in lines}) == 1
    # e - b is not comparable (one seed of b); with two seeds of b at 0.35 ± 0.07 it is
    assert studies.compare(runs, "e", "b") is None
    runs["b"][1] = studies.summarise_run(fake_eval(0.3), fake_metrics(900, 60))
    diff, spread, beyond = studies.compare(runs, "e", "b")
    assert diff == pytest.approx(0.25) and spread == pytest.approx(0.1) and beyond


def test_finished_runs_are_recorded_and_the_report_alone_is_enough_to_skip_them(tmp_path, capsys):
    for seed, acc in ((0, 0.5), (1, 0.7)):
        finished_run(tmp_path / "runs" / f"e-seed{seed}", acc, acc + 0.05)
    report = tmp_path / "ablation.json"
    args = ["--only", "e", "--seeds", "0,1", "--out-dir", str(tmp_path / "runs"), "--json", str(report)]
    assert ablation.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("eval.json exists") == 2
    assert "| e | MSD, k×b, queue from step 0 | 32 × 4 | 2 | 0.600 ± 0.141 |" in printed
    assert "| e (teacher) | its EMA weights | 32 × 4 | 2 | 0.650 ± 0.141 |" in printed
    saved = json.loads(report.read_text())
    assert saved["aggregate"]["e"]["zero_shot_accuracy"]["mean"] == pytest.approx(0.6)
    assert set(saved["records"]) == {"e-seed0", "e-seed1"}
    record = saved["records"]["e-seed0"]
    assert "--method msd" in record["command"] and record["machine"] and record["date"]
    # a new machine keeps only the repository: the run folders are gone, the report is enough
    (tmp_path / "runs").rename(tmp_path / "gone")
    assert ablation.main(args) == 0
    assert capsys.readouterr().out.count(f"in {report} already") == 2
    # a report of other settings is refused rather than mixed with these
    assert ablation.main(args + ["--steps", "300"]) == 2
    assert "holds runs with other settings" in capsys.readouterr().err


def test_report_prints_the_recorded_runs_and_their_comparisons_without_running(tmp_path, capsys):
    for arm, accs in (("e", (0.5, 0.7)), ("q", (0.80, 0.82)), ("g", (0.9, 0.6))):
        for seed, acc in enumerate(accs):
            finished_run(tmp_path / "runs" / f"{arm}-seed{seed}", acc, acc - 0.1 if arm != "g" else None)
    report = tmp_path / "ablation.json"
    assert ablation.main(["--only", "e,q,g", "--seeds", "0,1", "--out-dir", str(tmp_path / "runs"),
                          "--json", str(report)]) == 0
    capsys.readouterr()
    (tmp_path / "runs").rename(tmp_path / "gone")        # --report needs the JSON alone
    assert ablation.main(["--report", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "6 runs recorded" in out
    assert "| q | MSD k×b, queue after the warm-up | 32 × 4 | 2 | 0.810 ± 0.014 |" in out
    # q - e = 0.81 - 0.60 = +0.21 against e's spread 0.141: beyond; q - g = +0.06 against 0.212: within
    assert "zero_shot_accuracy q - e: +0.210 (beyond the larger standard deviation, 0.141)" in out
    assert "zero_shot_accuracy q - g: +0.060 (within the larger standard deviation, 0.212)" in out
    assert "e - g" in out and "e - a" not in out                  # a has no runs
    assert "  q  0: 0.800, 1: 0.820; 0: 0.700, 1: 0.720; 0: 0.810, 1: 0.830" in out   # per seed
    assert "  g  0: 0.900, 1: 0.600; –; 0: 0.910, 1: 0.610" in out
    assert ablation.main(["--report", "--json", str(tmp_path / "none.json")]) == 2
    assert "no report at" in capsys.readouterr().err


def test_the_committed_report_is_read_as_it_is(capsys):
    """docs/results/ablation.json: --report reads it, and its table is what this code makes of its
    records. Six runs (arms a, e and g, seeds 0 and 1) have no second evaluation set and no run folder
    to make one from: the column is the mean of the runs that have it (the aggregate's n)."""
    path = os.path.join(ROOT, "docs", "results", "ablation.json")
    committed = studies.read_json(path)
    assert ablation.main(["--report", "--json", path]) == 0
    out = capsys.readouterr().out
    assert f"{len(committed['records'])} runs recorded" in out
    assert committed["table"] in out
    without = sorted(k for k, r in committed["records"].items()
                     if "second_zero_shot_accuracy" not in r["summary"])
    assert without == ["a-seed0", "a-seed1", "e-seed0", "e-seed1", "g-seed0", "g-seed1"]
    assert committed["aggregate"]["a"]["second_zero_shot_accuracy"]["n"] == 1
    assert committed["aggregate"]["a"]["zero_shot_accuracy"]["n"] == 3
