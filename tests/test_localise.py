"""experiments/localise.py: each try is the default plus its own options, CLIP waits for the
ladder's choice of its recipe, and the table is the mean ± sd of the recorded runs beside the maps
that ignore the image."""

import json
import shlex

from experiments import ladder, localise
import train
from test_ablation import check_help_opens_with_a_full_sentence
from test_ladder import fake_report


def commands(capsys, *extra):
    assert localise.main(["--dry-run", *extra]) == 0
    out = capsys.readouterr().out
    return out, [shlex.split(line) for line in out.splitlines() if "train.py" in line]


def test_each_try_is_the_default_plus_its_options(capsys, tmp_path):
    out, cmds = commands(capsys, "--ladder-json", str(tmp_path / "none.json"))
    assert "clip: skipped" in out and "msd-ladder: skipped" in out
    assert len(cmds) == (len(localise.TRIES) - len(localise.LADDER_TRIES)) * len(localise.SEEDS)
    default = vars(train.get_args([])[1])
    for cmd in cmds:
        args = vars(train.get_args(cmd[2:])[1])
        name, seed = args["out"].split("/")[-2:]
        assert seed == f"seed{args['seed']}" and args["seed"] in localise.SEEDS
        differ = {k for k in args if args[k] != default[k]} - {"out", "seed"}
        named = {o.lstrip("-").replace("-", "_") for o in localise.TRIES[name] if o.startswith("--")}
        assert differ == named | {"lr"} and args["lr"] == 5e-4, name   # the study's pinned rate


def test_clip_runs_at_the_recipe_the_ladder_chose(capsys, tmp_path):
    scores = {(s, arm, r): 0.5 for s in ladder.SEARCH_SETTINGS for arm in ladder.ARMS
              for r in ladder.RECIPES}
    scores[("clean", "clip-dup", "lr2.5e-4-w3")] = scores[("small-noisy", "clip-dup", "lr2.5e-4-w3")] = 0.9
    scores[("clean", "msd", "lr1e-3-w6")] = scores[("small-noisy", "msd", "lr1e-3-w6")] = 0.9
    (tmp_path / "ladder.json").write_text(json.dumps(fake_report(scores)))
    _, cmds = commands(capsys, "--tries", ",".join(localise.LADDER_TRIES), "--ladder-json", str(tmp_path / "ladder.json"))
    assert len(cmds) == 3 * len(localise.LADDER_TRIES) and list(localise.LADDER_TRIES)[:3] == [
        "clip", "msd-ladder", "mean-ladder"]
    args = train.get_args(cmds[0][2:])[1]
    assert (args.method, args.duplicate_aware, args.lr, args.warmup_steps) == ("clip", True, 2.5e-4, 167)
    args = train.get_args(cmds[1][2:])[1]
    assert (args.method, args.alpha, args.lr, args.warmup_steps) == ("msd", 0.4, 1e-3, 83)
    args = train.get_args(cmds[2][2:])[1]                  # mean pooling at MSD's chosen recipe
    assert (args.pool, args.method, args.lr, args.warmup_steps) == ("mean", "msd", 1e-3, 83)
    msd = vars(train.get_args(cmds[1][2:])[1])
    for cmd in cmds[3:len(localise.LADDER_TRIES)]:       # every other MSD try: one change from it
        args = vars(train.get_args(cmd[2:])[1])
        name = args["out"].split("/")[-2]
        differ = {k for k in args if args[k] != msd[k]} - {"out"}
        assert localise.LADDER_TRIES[name] == "msd" and differ == {
            o.lstrip("-").replace("-", "_") for o in localise.TRIES[name] if o.startswith("--")}, name


def test_table_is_the_mean_and_spread_beside_the_nulls():
    def summary(pg, acc):
        return {"grounding_pointing_game": pg, "grounding_unlocated_pointing_game": pg / 2,
                "zero_shot_accuracy": acc, "grounding_random_grid_pointing_game": 0.06,
                "grounding_text_prior_pointing_game": 0.5,
                "grounding_text_prior_unlocated_pointing_game": 0.3,
                "grounding_contrast_pointing_game": pg + 0.1}
    report = {"records": {"msd/seed0": {"summary": summary(0.2, 0.9)},
                          "msd/seed1": {"summary": summary(0.4, 0.92)},
                          "mean/seed0": {"summary": summary(0.6, 0.8)}}}
    text = localise.table(report)
    assert "| msd | 2 | 0.300 ± 0.141 | 0.150 ± 0.071 | – | – | 0.910 ± 0.014 |" in text
    assert "| mean | 1 | 0.600 | 0.300 |" in text and "registers" not in text
    assert "| a random grid map |  | 0.060 | 0.060 |" in text
    assert "| – | 0.400 ± 0.141 | – |" in text      # t2i R@10 not given, the contrast map, the teacher
    assert text.split("\n")[-2].endswith("|  |  |  | 0.060 |  |")   # the contrast map's null: the same grid
    assert "| the text-only prior |  | 0.500 | 0.300 |" in text
    # a try on a finer grid gets its own nulls, named by its image and grid
    report["records"]["patch4/seed0"] = {"summary": {**summary(0.7, 0.85), "grounding_random_grid_pointing_game": 0.03},
                                         "command": "python train.py --patch-size 4 --seed 0"}
    text = localise.table(report)
    assert "| a random grid map (64 px, 8x8) |  | 0.060 | 0.060 |" in text   # most runs: no names
    assert "| a random grid map (64 px, 16x16: patch4) |  | 0.030 | 0.030 |" in text
    assert localise.image_and_patch("python train.py --image-size 128 --seed 1") == (128, 8)


def test_help_opens_with_a_full_sentence(capsys):
    check_help_opens_with_a_full_sentence(localise, localise.parse_args, capsys)


def test_re_evaluate_rescores_a_recorded_run_and_keeps_where_it_was_trained(tmp_path, monkeypatch):
    from test_ablation import fake_eval, finished_run
    out = tmp_path / "runs"
    finished_run(out / "msd" / "seed0", 0.5, teacher_acc=0.4)
    report = tmp_path / "localise.json"
    report.write_text(json.dumps({"records": {"msd/seed0": {
        "summary": {"zero_shot_accuracy": 0.5}, "command": "python train.py --seed 0",
        "commit": "abc1234"}}}))

    real = localise.subprocess.run

    def fake_eval_py(cmd, **kwargs):   # eval.py writing its JSON: today's evaluation scores 0.7
        if "eval.py" not in " ".join(cmd):
            return real(cmd, **kwargs)     # git, for the record's commit
        path = cmd[cmd.index("--json") + 1]
        with open(path, "w") as f:
            json.dump(fake_eval(0.7 if "eval.json" in path else 0.6), f)
        return type("Done", (), {"returncode": 0})()
    monkeypatch.setattr(localise.subprocess, "run", fake_eval_py)   # studies.py's subprocess too
    assert localise.main(["--tries", "msd", "--re-evaluate", "--out-dir", str(out),
                          "--json", str(report)]) == 0
    rec = json.loads(report.read_text())["records"]["msd/seed0"]
    assert rec["summary"]["zero_shot_accuracy"] == 0.7 and rec["summary"]["second_zero_shot_accuracy"] == 0.6
    assert rec["trained_at"] == "abc1234" and rec["command"] == "python train.py --seed 0"
    assert set(json.loads(report.read_text())["records"]) == {"msd/seed0"}   # seed 1, 2: not trained


def test_sides_counts_where_a_maximum_lies_for_one_sided_masks():
    import torch
    from experiments.map_sides import sides
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 0:2] = True          # image left
    masks[1, 2:4, 6:8] = True          # image right
    masks[2, 2:4, 3:5] = True          # across the middle: not one-sided
    masks[3, 5:7, 1:3] = True          # image left
    grids = torch.zeros(4, 4, 4)
    grids[0, 1, 0] = 1.0               # left: its side
    grids[1, 1, 0] = 1.0               # left: the other side
    grids[2, 0, 0] = 1.0
    grids[3, 3, 3] = 1.0               # right: the other side
    assert sides(grids, masks) == (1, 2, 3)
    odd = torch.zeros(1, 3, 3)
    odd[0, 0, 1] = 1.0                 # the middle column of an odd grid: neither side
    assert sides(odd, masks[:1]) == (0, 0, 1)


def test_map_sides_json_keeps_the_runs_already_in_it(tmp_path, monkeypatch, capsys):
    from experiments import map_sides
    report = tmp_path / "map_sides.json"
    report.write_text(json.dumps({"old/seed0": {"report": {"same_side": 0.25}}}))
    run = tmp_path / "new" / "seed0"
    run.mkdir(parents=True)
    (run / "ckpt.pt").write_bytes(b"")
    side = {"same_side": 0.5, "other_side": 0.5, "one_sided": 2}
    monkeypatch.setattr(map_sides, "measure", lambda r: {"report": dict(side), "unlocated": dict(side)})
    assert map_sides.main([str(run), "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["old/seed0"] == {"report": {"same_side": 0.25}}       # kept as it was
    assert results[str(run)]["report"] == side and set(results[str(run)]["measured"]) == {"commit", "machine", "date"}
    assert map_sides.main([str(tmp_path / "none"), "--json", str(report)]) == 2   # no checkpoint: refused
    assert "no ckpt.pt in" in capsys.readouterr().err and str(run) in json.loads(report.read_text())
