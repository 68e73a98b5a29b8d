"""regimes.py: every run sees the default budget, each regime is the options it claims, and the
study records, skips and compares runs as studies.py promises (on hand-made finished runs)."""

import json
import shlex

import pytest

import train
from experiments import regimes
from test_ablation import check_help_opens_with_a_full_sentence, finished_run


def test_every_command_is_the_default_run_with_its_regime_and_arm(capsys):
    assert regimes.main(["--dry-run", "--seeds", "0,1"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 2 * len(regimes.REGIMES) * len(regimes.ARMS)
    default = train.get_args([])[1]
    seen = set()
    for cmd in commands:
        assert cmd[1].endswith("train.py")
        _, args = train.get_args(cmd[2:])
        n, noise = regimes.REGIMES[args.out.split("/")[-2]]
        arm = args.out.split("/")[-1].rsplit("-seed", 1)[0]
        assert (args.n_train, args.report_noise) == (n, noise)
        # the same samples in every arm: the default run's 32,000
        assert args.steps * args.batch_size * args.accum_steps == 32000
        # and otherwise the defaults: only what the arm names differs
        differ = {k for k, v in vars(args).items() if v != getattr(default, k)}
        named = {o.lstrip("-").replace("no-", "").replace("-", "_")
                 for o in regimes.ARMS[arm][1] if o.startswith("--")}
        # (warm-ups are shares of the run, so clip-b's 1000 steps move them too)
        assert differ - {"out", "seed", "n_train", "report_noise", "warmup_steps",
                         "alpha_warmup", "queue_start"} == named, arm
        seen.add((args.out.split("/")[-2], arm, args.seed))
    assert len(seen) == len(commands)
    # seed-major: all of seed 0 comes first
    assert [int(c[c.index("--seed") + 1]) for c in commands][:16] == [0] * 16


def test_extra_may_not_change_the_study(capsys):
    with pytest.raises(SystemExit):
        regimes.parse_args(["--extra=--report-noise 0.1"])
    assert "--extra may not set --report-noise" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        regimes.parse_args(["--arms", "msd,moco"])
    assert "--arms: unknown ['moco']" in capsys.readouterr().err


def test_runs_are_recorded_skipped_and_compared(tmp_path, capsys):
    out = tmp_path / "runs"
    for seed in (0, 1):
        finished_run(out / "noisy" / f"msd-seed{seed}", 0.8 + seed / 10, teacher_acc=0.7)
        finished_run(out / "noisy" / f"clip-seed{seed}", 0.6 + seed / 100)
    report = tmp_path / "regimes.json"
    args = ["--regimes", "noisy", "--arms", "msd,clip", "--seeds", "0,1", "--out-dir", str(out),
            "--json", str(report)]
    assert regimes.main(args) == 0
    printed = capsys.readouterr().out
    assert "| noisy | msd | 2 | 0.850 ± 0.071 | – | 0.860 ± 0.071 |" in printed
    assert "| noisy | msd teacher | 2 | 0.700 ± 0.000 | – |" in printed
    assert "| noisy | clip | 2 | 0.605 ± 0.007 | – |" in printed
    assert "noisy        zero_shot_accuracy         msd - clip: +0.245 (beyond the spread, 0.071)" in printed
    records = json.loads(report.read_text())["records"]
    assert sorted(records) == ["noisy/clip-seed0", "noisy/clip-seed1", "noisy/msd-seed0",
                               "noisy/msd-seed1"]
    assert "--report-noise 0.3" in records["noisy/msd-seed0"]["command"]
    # a second call trains nothing: the report alone is enough
    assert regimes.main(args) == 0
    assert capsys.readouterr().out.count("already") == 4
    assert regimes.main(["--report", "--json", str(report)]) == 0
    assert "msd - clip" in capsys.readouterr().out


def test_grounding_tables_per_class_with_the_random_map_row():
    def summary(pg, teacher_pg):
        s = {"grounding_pointing_game/nodule": pg, "grounding_cnr/nodule": 1.0,
             "grounding_random/nodule": 0.004, "grounding_pointing_game": pg, "grounding_cnr": 1.0}
        s.update({f"teacher_{k}": teacher_pg if "pointing" in k else v for k, v in s.items()
                  if "random" not in k})
        return s
    runs = {("today", "msd"): {0: summary(0.5, 0.3), 1: summary(0.7, 0.3)},
            ("today", "clip"): {0: summary(0.2, None)}}
    text = regimes.grounding_tables(runs)
    assert "| today | msd | 2 | 0.600 ± 0.141 | 0.600 ± 0.141 |" in text
    assert "| today | msd teacher | 2 | 0.300 ± 0.000 | 0.300 ± 0.000 |" in text
    assert "| today | clip | 1 | 0.200 | 0.200 |" in text
    assert "| a random grid map | | | 0.004 | |" in text
    assert regimes.grounding_tables({("today", "msd"): {0: {"zero_shot_accuracy": 0.9}}}) == ""


def test_workers_share_the_pending_runs_and_one_report(tmp_path, capsys):
    out, report = tmp_path / "runs", tmp_path / "regimes.json"
    for seed in (0, 1):
        for arm in ("msd", "clip"):
            finished_run(out / "small" / f"{arm}-seed{seed}", 0.5 + seed / 10, teacher_acc=0.4)
    common = ["--regimes", "small", "--arms", "msd,clip", "--seeds", "0,1", "--out-dir", str(out),
              "--json", str(report)]
    # worker 2 of 2 takes every second run of the study's list (msd then clip, seed by seed)
    assert regimes.main(common + ["--worker", "2/2"]) == 0
    assert "worker 2 of 2: 2 runs, 2 not yet recorded" in capsys.readouterr().out
    assert sorted(json.loads(report.read_text())["records"]) == ["small/clip-seed0", "small/clip-seed1"]
    # worker 1 takes the others, however late it starts, and the report keeps both workers' runs
    assert regimes.main(common + ["--worker", "1/2"]) == 0
    assert "worker 1 of 2: 2 runs, 2 not yet recorded" in capsys.readouterr().out
    assert sorted(json.loads(report.read_text())["records"]) == [
        "small/clip-seed0", "small/clip-seed1", "small/msd-seed0", "small/msd-seed1"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_record_written_by_another_worker_meanwhile_is_kept(tmp_path, monkeypatch):
    out, report = tmp_path / "runs", tmp_path / "regimes.json"
    finished_run(out / "today" / "msd-seed0", 0.9, teacher_acc=0.8)
    real = regimes.train_and_evaluate

    def and_meanwhile(tag, cmd, run, teacher):   # the other worker records its run during ours
        other = json.loads(report.read_text()) if report.exists() else {
            "settings": {"extra": "", "regimes": {k: list(v) for k, v in regimes.REGIMES.items()},
                         "arms": {k: list(v[1]) for k, v in regimes.ARMS.items()}}, "records": {}}
        other["records"]["today/clip-seed0"] = {"summary": {"zero_shot_accuracy": 0.7}}
        report.write_text(json.dumps(other))
        return real(tag, cmd, run, teacher)
    monkeypatch.setattr(regimes, "train_and_evaluate", and_meanwhile)
    assert regimes.main(["--regimes", "today", "--arms", "msd", "--seeds", "0", "--out-dir",
                         str(out), "--json", str(report)]) == 0
    assert sorted(json.loads(report.read_text())["records"]) == ["today/clip-seed0", "today/msd-seed0"]


def test_worker_must_be_i_of_n(capsys):
    for bad, why in (("2", "--worker must be I/N"), ("3/2", "I must be between 1 and N")):
        with pytest.raises(SystemExit):
            regimes.parse_args(["--worker", bad])
        assert why in capsys.readouterr().err


def test_decision_table_keeps_the_default_unless_beaten_beyond_the_spread():
    def cell(accs, teacher=None):
        return {s: {"zero_shot_accuracy": a, "second_zero_shot_accuracy": a + 0.01, "t2i_r10": 0.5,
                    "train_min": 7.0,
                    "teacher_zero_shot_accuracy": None if teacher is None else teacher[s]}
                for s, a in enumerate(accs)}
    runs = {("today", "msd"): cell([0.90, 0.92], teacher=[0.95, 0.97]),
            ("today", "clip"): cell([0.70, 0.80]),
            ("today", "msd-a0"): cell([0.88, 0.96]),       # ahead of MSD, within the spread
            ("small", "clip"): cell([0.90, 0.90]),          # ahead of MSD beyond it
            ("small", "msd"): cell([0.85, 0.86], teacher=[0.80, 0.80]),
            ("noisy", "clip-b"): cell([0.95]),              # ahead, but one seed
            ("noisy", "msd"): cell([0.60, 0.62])}
    lines = regimes.decision_table(runs).splitlines()
    assert len(lines) == 5   # the header, its rule and the three regimes that have runs
    # today: MSD stays; it is 0.01 behind --alpha 0 within the spread; it leads exact CLIP by 0.16,
    # beyond the larger std (0.0707); its teacher leads it by 0.05
    assert lines[2] == ("| 20,000 pairs, clean | msd: the default | 2 | 0.910 ± 0.014 | "
                        "0.920 ± 0.014 | 0.500 ± 0.000 | 7.0 ± 0.0 | msd-a0: -0.010, within 0.057 | "
                        "+0.160, beyond 0.071 | +0.050, beyond 0.014 |")
    # small: exact CLIP beats MSD beyond the spread, so it is what to use
    assert lines[3] == ("| 2,000 pairs, clean | clip: `--method clip --no-duplicate-aware` | 2 | 0.900 ± 0.000 | "
                        "0.910 ± 0.000 | 0.500 ± 0.000 | 7.0 ± 0.0 | msd: +0.045, beyond 0.007 | "
                        "-0.045, beyond 0.007 | -0.055, beyond 0.007 |")
    # noisy: one seed of CLIP at b cannot displace the default; the bare difference says so
    assert lines[4].startswith("| 20,000 pairs, noise 0.3 | msd: the default | 2 | 0.610 ± 0.014 |")
    assert "| clip-b: -0.340 (1 seed) | – |" in lines[4]


def test_help_opens_with_a_full_sentence(capsys):
    check_help_opens_with_a_full_sentence(regimes, regimes.parse_args, capsys)
