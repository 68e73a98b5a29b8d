"""train.py's options beyond their definitions (which train.py shows): the checks that need nothing
but the arguments, and the defaults that are not constants (warm-ups as shares of the run,
--queue-size auto from the data).

Depends on argparse and model.PRESETS only.
"""

import argparse
import math

from model import PRESETS

QUEUE_CAP = 2048   # the largest default queue (default_queue_size): the measured runs' K


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except None: those options say in words what they default to."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def queue_size_arg(text):
    """--queue-size: a number of features, or "auto" (None here: sized from the training set once
    it is loaded, default_queue_size)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def add_evaluation_and_test_options(p):
    """train.py's options that are not hyperparameters: the user's evaluation sets (eval.py's
    options, replacing the synthetic benchmark) and the tests' hooks, hidden from --help."""
    a = p.add_argument
    a("--eval-manifest", default=None, metavar="CSV",
      help="quick checks and final zero-shot / few-shot on these images: columns image,label")
    a("--prompts", default=None, metavar="JSON",
      help='class prompts for --eval-manifest: {"class": ["prompt", ...], ...}')
    a("--retrieval-manifest", default=None, metavar="CSV",
      help="final retrieval (and the quick checks, without --eval-manifest) on these held-out "
           "image,text pairs (with a split column: its test rows)")
    a("--grounding-manifest", default=None, metavar="CSV",
      help="final phrase grounding on these images: columns image,text,x,y,w,h (boxes in the "
           "image's pixels), optionally label (docs/grounding.md)")
    a("--eval-grounding", type=int, default=50, metavar="N",  # evaluation.sets.GROUNDING_PER_CLASS
      help="final synthetic benchmark: grounding studies per finding (5 findings; each map is also "
           "scored against 10 random grid maps)")
    # The tests' hooks, hidden from --help: the first step's gradients, a Ctrl-C or SIGKILL at a step
    a("--grad-dump", default=None, help=argparse.SUPPRESS)
    a("--interrupt-at", type=int, default=None, help=argparse.SUPPRESS)
    a("--kill-at", type=int, default=None, help=argparse.SUPPRESS)


def check(p, args):
    """Refuse every mistake that needs nothing but the arguments, as one line naming the option
    (p.error), and resolve the defaults that are shares of the run. train.py then checks what
    needs files or the data."""
    # float() accepts "nan" and "inf"; either would reach AdamW or the loss and fail far from here
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            p.error(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.eval_grounding < 1:
        p.error(f"--eval-grounding must be >= 1, got {args.eval_grounding}")
    if not 0 <= args.report_noise <= 1:
        p.error(f"--report-noise must be in [0, 1], got {args.report_noise}")
    if args.report_noise > 0 and args.train_manifest:
        p.error(f"--report-noise {args.report_noise:g} is for the synthetic set only, not "
                f"--train-manifest {args.train_manifest}: a manifest's reports are used as they are")
    for name in ("weight_decay", "max_grad_norm", "save_every", "eval_every", "registers",
                 "attention_window"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.image_size is None:
        args.image_size = PRESETS[args.preset]["image_size"]
    if args.init_from and args.resume:
        p.error("--init-from starts a new run from another run's weights, --resume continues this "
                "--out's own run: give one of them")
    if args.steps == 0 and not args.init_from:
        p.error("--steps must be positive, got 0 (0 is for --init-from: evaluate the model it starts from)")
    for name in ("steps", "batch_size", "accum_steps", "image_size", "log_every"):
        if getattr(args, name) < 0 or (getattr(args, name) == 0 and name != "steps"):
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.word_patch < 0 or (args.word_patch and args.method != "msd"):
        p.error(f"--word-patch must be >= 0 and is an MSD term (--method msd), got {args.word_patch:g} "
                f"with --method {args.method}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 <= args.momentum <= 1:
        p.error(f"--momentum must be in [0, 1], got {args.momentum}")
    if args.queue_size is not None and args.queue_size < 0:
        p.error(f"--queue-size must be >= 0, got {args.queue_size}")
    resolve_warmups(args)                             # resolved now, so --resume compares numbers
    for name in ("warmup_steps", "alpha_warmup"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.queue_start < 0:
        p.error(f"--queue-start must be >= 0, got {args.queue_start}")
    if args.momentum_half_life is not None and not 0 < args.momentum_half_life < math.inf:
        p.error(f"--momentum-half-life must be a positive fraction of the run, got {args.momentum_half_life}")
    if args.augment_shift is not None and not 0 <= args.augment_shift < 0.5:
        p.error(f"--augment-shift is a fraction of the image side in [0, 0.5), got {args.augment_shift}")
    patch = PRESETS[args.preset]["patch_size"] if args.patch_size is None else args.patch_size
    whose = "--patch-size" if args.patch_size is not None else f"the {args.preset} preset's patch size"
    if patch < 1 or (args.stem == "conv" and (patch < 2 or patch & (patch - 1))):
        p.error(f"--patch-size must be a power of two >= 2 with --stem conv (it halves the image "
                f"log2(patch) times), or >= 1 with --stem patch; got {patch}")
    if args.image_size % patch:
        p.error(f"--image-size {args.image_size} is not divisible by {whose} {patch}: "
                f"use a multiple of {patch}, e.g. {args.image_size // patch * patch or patch}")
    return args


def resolve_warmups(args):
    """The defaults that are shares of the run: the learning-rate warm-up is a sixth of the steps
    (83 of 500); alpha warms up, and a queue joins the bank, when it ends (the ablation's arm q:
    before that, the features of a few steps ago are those of a different, fast-changing model)."""
    if args.warmup_steps is None:
        args.warmup_steps = round(args.steps / 6)
    if args.alpha_warmup is None:
        args.alpha_warmup = args.warmup_steps
    if args.queue_start is None:
        args.queue_start = args.warmup_steps
    return args


def default_queue_size(n, window, cap=QUEUE_CAP):
    """--queue-size auto, for n training pairs and a window of `window` pairs (N
    times the ranks). docs/method.md: K a multiple of the window (each step's enqueue then fills whole
    slots, never splitting a window across the wrap), and small relative to the data set (a queue
    holding much of it holds the same reports many times, and stale features of pairs the student
    sees again soon). So: the largest multiple of the window not above n / 8 nor `cap`; 0 (no
    queue) when that is below one window. The synthetic set (20,000 pairs) gets 2048."""
    return min(cap, n // 8) // window * window
