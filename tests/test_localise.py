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
    assert "clip: skipped" in out and len(cmds) == 3 * len(localise.SEEDS)
    default = vars(train.get_args([])[1])
    for cmd in cmds:
        args = vars(train.get_args(cmd[2:])[1])
        name, seed = args["out"].split("/")[-2:]
        assert seed == f"seed{args['seed']}" and args["seed"] in localise.SEEDS
        differ = {k for k in args if args[k] != default[k]} - {"out", "seed"}
        named = {o.lstrip("-").replace("-", "_") for o in localise.TRIES[name] if o.startswith("--")}
        assert differ == named, name


def test_clip_runs_at_the_recipe_the_ladder_chose(capsys, tmp_path):
    scores = {(s, arm, r): 0.5 for s in ladder.SEARCH_SETTINGS for arm in ladder.ARMS
              for r in ladder.RECIPES}
    scores[("clean", "clip-dup", "lr2.5e-4-w3")] = scores[("small-noisy", "clip-dup", "lr2.5e-4-w3")] = 0.9
    (tmp_path / "ladder.json").write_text(json.dumps(fake_report(scores)))
    _, cmds = commands(capsys, "--tries", "clip", "--ladder-json", str(tmp_path / "ladder.json"))
    assert len(cmds) == 3
    args = train.get_args(cmds[0][2:])[1]
    assert (args.method, args.duplicate_aware, args.lr, args.warmup_steps) == ("clip", True, 2.5e-4, 167)


def test_table_is_the_mean_and_spread_beside_the_nulls():
    def summary(pg, acc):
        return {"grounding_pointing_game": pg, "grounding_unlocated_pointing_game": pg / 2,
                "zero_shot_accuracy": acc, "grounding_random_grid_pointing_game": 0.06,
                "grounding_text_prior_pointing_game": 0.5,
                "grounding_text_prior_unlocated_pointing_game": 0.3}
    report = {"records": {"msd/seed0": {"summary": summary(0.2, 0.9)},
                          "msd/seed1": {"summary": summary(0.4, 0.92)},
                          "mean/seed0": {"summary": summary(0.6, 0.8)}}}
    text = localise.table(report)
    assert "| msd | 2 | 0.300 ± 0.141 | 0.150 ± 0.071 | – | – | 0.910 ± 0.014 |" in text
    assert "| mean | 1 | 0.600 | 0.300 |" in text and "registers" not in text
    assert "| a random grid map |  | 0.060 | 0.060 |" in text
    assert "| the text-only prior |  | 0.500 | 0.300 |" in text


def test_help_opens_with_a_full_sentence(capsys):
    check_help_opens_with_a_full_sentence(localise, localise.parse_args, capsys)
