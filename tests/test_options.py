"""train.py's command line: the defaults sized from the run (the queue, the warm-ups), and every
mistake in the arguments alone refused as one line naming the option, before any data is made."""

import pytest
import torch

import train
from evaluation.sets import unlabelled_prompt_classes
from plumbing import options


@pytest.mark.parametrize("n, window, expected", [
    (20000, 128, 2048),   # the synthetic default: n / 8 = 2500, capped at 2048
    (4000, 128, 384),     # n / 8 = 500: three windows
    (1300, 128, 128),     # n / 8 = 162: one window
    (1000, 128, 0),       # n / 8 = 125 is below one window: no queue
    (512, 16, 64),
    (100000, 96, 2016),   # a window that does not divide the cap: 21 x 96, the largest multiple below it
])
def test_default_queue_size(n, window, expected):
    assert options.default_queue_size(n, window) == expected


def test_default_queue_size_rule_and_default_run():
    # the rule: a multiple of the window, at most n / 8 and 2048, and one more window would not be
    for n in range(0, 30000, 37):
        for window in (16, 100, 128, 256):
            k = options.default_queue_size(n, window)
            assert k % window == 0 and 0 <= k <= min(2048, n / 8) < k + window
    # the default run has no queue (README, Half the cost); auto gives the synthetic set 2048
    _, args = train.get_args([])
    assert args.queue_size == 0
    assert train.get_args(["--queue-size", "auto"])[1].queue_size is None
    assert options.default_queue_size(args.n_train, args.batch_size * args.accum_steps) == 2048


def test_queue_size_is_a_number_or_auto(capsys):
    assert train.get_args(["--queue-size", "512"])[1].queue_size == 512
    with pytest.raises(SystemExit):
        train.get_args(["--queue-size", "big"])
    assert "--queue-size: expected a whole number or 'auto', got 'big'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    ([], (83, 83, 83)),                                      # the default run: 500 steps
    (["--steps", "300"], (50, 50, 50)),                      # shares of the run
    (["--steps", "300", "--warmup-steps", "10"], (10, 10, 10)),
    (["--alpha-warmup", "0", "--queue-start", "0"], (83, 0, 0)),    # explicit values stay
    (["--steps", "1000", "--queue-start", "7"], (167, 167, 7)),
])
def test_warm_ups_default_to_shares_of_the_run(argv, expected):
    _, args = train.get_args(argv)
    args = options.resolve_warmups(args)
    assert (args.warmup_steps, args.alpha_warmup, args.queue_start) == expected


def test_unlabelled_prompt_classes():
    assert unlabelled_prompt_classes(["Edema", "fracture", "No Finding"],
                                           ["edema", "no finding", "cardiomegaly"]) == ["fracture"]
    assert unlabelled_prompt_classes(["edema"], ["Edema"]) == []


@pytest.mark.parametrize("extra, message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--lr=-1e-3"], "--lr must be positive, got -0.001"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--weight-decay=-0.1"], "--weight-decay must be >= 0, got -0.1"),
    (["--alpha", "nan"], "--alpha must be a finite number, got nan"),
    (["--momentum", "inf"], "--momentum must be a finite number, got inf"),
    (["--max-grad-norm=-inf"], "--max-grad-norm must be a finite number, got -inf"),
    (["--max-grad-norm=-1"], "--max-grad-norm must be >= 0, got -1.0"),
    (["--save-every=-5"], "--save-every must be >= 0, got -5"),
    # the checks options.py makes after parsing, on the arguments alone
    (["--steps", "0"], "--steps must be positive, got 0 (0 is for --init-from: evaluate the model it starts from)"),
    (["--alpha", "1.5"], "--alpha must be in [0, 1], got 1.5"),
    (["--queue-size=-64"], "--queue-size must be >= 0, got -64"),
    (["--warmup-steps=-1"], "--warmup-steps must be >= 0, got -1"),
    (["--image-size", "60"], "--image-size 60 is not divisible by the tiny preset's patch size 8: use a multiple of 8, e.g. 56"),
    (["--patch-size", "16", "--image-size", "72"], "--image-size 72 is not divisible by --patch-size 16: use a multiple of 16, e.g. 64"),
    (["--augment-shift", "0.5"], "--augment-shift is a fraction of the image side in [0, 0.5), got 0.5"),
    (["--augment-shift=-0.1"], "--augment-shift is a fraction of the image side in [0, 0.5), got -0.1"),
    (["--patch-size", "6"], "--patch-size must be a power of two >= 2 with --stem conv (it halves the image "
                            "log2(patch) times), or >= 1 with --stem patch; got 6"),
    (["--patch-size", "0", "--stem", "patch"], "--patch-size must be a power of two >= 2 with --stem conv "
                                               "(it halves the image log2(patch) times), or >= 1 with --stem patch; got 0"),
])
def test_bad_numbers_are_parser_errors(extra, message, capsys):
    """Checked while parsing, before any data or model exists (a traceback would surface here as an
    exception other than SystemExit)."""
    with pytest.raises(SystemExit) as exit_info:
        train.get_args(extra)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.strip().splitlines()[-1].endswith(f": error: {message}")


def test_test_hooks_are_hidden_from_help():
    help_text = train.build_parser().format_help()
    assert "--save-every" in help_text
    for hook in ("--grad-dump", "--interrupt-at", "--kill-at"):
        assert hook not in help_text
        train.get_args([hook, "1"])                    # still accepted


@pytest.mark.parametrize("extra, message", [
    (["--report-noise", "1.5"], "--report-noise must be in [0, 1], got 1.5"),
    (["--report-noise=-0.1"], "--report-noise must be in [0, 1], got -0.1"),
    (["--report-noise", "nan"], "--report-noise must be a finite number, got nan"),
    (["--report-noise", "0.3", "--train-manifest", "pairs.csv"],
     "--report-noise 0.3 is for the synthetic set only, not --train-manifest pairs.csv"),
])
def test_report_noise_is_a_probability_for_the_synthetic_set_only(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.get_args(extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_help_says_the_schedule_repeats_a_small_set(capsys):
    with pytest.raises(SystemExit):
        train.get_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "the default 32,000 samples see n pairs 32,000 / n times" in help_text
    assert "--report-noise P" in help_text
    _, args = train.get_args([])
    assert args.report_noise == 0.0


def test_a_checkpoint_from_before_augment_shift_resumes_only_at_its_shift(tmp_path):
    """Options added later (--augment-shift, --patch-size) default to None, so a checkpoint saved
    before they existed compares equal at their defaults, and differs once one is given."""
    from plumbing.checkpoint import FORMAT, read_for_resume
    from plumbing.runtime import InputError
    _, args = train.get_args(["--resume"])
    saved = {k: v for k, v in vars(args).items() if k not in ("augment_shift", "patch_size")}
    path = tmp_path / "ckpt.pt"
    torch.save({"student": {}, "optimizer": {}, "step": 3, "rng": {},
                "config": {"format": FORMAT, "train": saved}}, path)
    assert read_for_resume(str(path), args)["step"] == 3
    _, wider = train.get_args(["--resume", "--augment-shift", "0.0625"])
    with pytest.raises(InputError, match=r"--augment-shift None \(saved\) vs 0.0625"):
        read_for_resume(str(path), wider)
