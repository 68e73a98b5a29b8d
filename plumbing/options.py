"""train.py's options: what a run can set, the checks that need nothing but the arguments, and the
defaults that are not constants (warm-ups as shares of the run, --queue-size auto from the data).

`get_args` returns (parser, args) with every argument-only mistake already refused as one line
naming the option (parser.error); train.py then checks what needs files or the data.

Depends on argparse and model.PRESETS only.
"""

import argparse
import math

from model import PRESETS

DESCRIPTION = ("Momentum self-distillation (MSD) image-report pretraining on one GPU (or a CPU), "
               "top to bottom.")

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


def get_args(argv=None):
    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION, formatter_class=HelpFormatter)
    a = p.add_argument
    # what to train on and where to write
    a("--out", default="out", help="folder for ckpt.pt, tokenizer.json, metrics.jsonl, eval.json")
    a("--train-manifest", default=None, metavar="CSV",
      help="train on this image,text manifest instead of the synthetic set (see README)")
    a("--n-train", type=int, default=20000,
      help="synthetic training pairs to render (small data: the default schedule, 500 steps of 64 "
           "pairs = 32,000 samples, then repeats the set 32,000 / n times, e.g. 16 times for 2,000)")
    a("--report-noise", type=float, default=0.0, metavar="P",
      help="noisy synthetic training reports: each finding the image shows is left out of its "
           "report with probability P, and with probability P/2 the pair gets another training "
           "study's report; labels and evaluation sets stay clean (docs/data.md)")
    a("--data-cache", default="data_cache",
      help="folder for rendered synthetic sets and decoded manifests ('' = none: decode into memory)")
    a("--workers", type=int, default=0, help="processes rendering or decoding images (0 = all cores)")
    # the model
    a("--preset", default="tiny", choices=sorted(PRESETS), help="model size (model.py PRESETS)")
    a("--image-size", type=int, default=None, help="image side in pixels (default: the preset's)")
    a("--channels", type=int, default=1, choices=[1, 3], help="1 grayscale, 3 RGB")
    a("--stem", default="conv", choices=["conv", "patch"],
      help="ViT patch embedding: stride-2 convolutions, or ViT's single p x p convolution")
    a("--pool", default="max", choices=["max", "cls"],
      help="image vector: max over patch tokens (keeps small findings), or ViT's class token")
    a("--vocab-size", type=int, default=2048, help="tokenizer vocabulary trained on the reports")
    # the optimisation
    a("--method", default="msd", choices=["msd", "clip", "clip-naive"],
      help="msd: momentum self-distillation. The baselines: clip: CLIP over the whole window, with "
           "--accum-steps > 1 the EXACT gradient of CLIP at batch k*b (a feature cache: one more "
           "student forward, without gradient); clip-naive: CLIP per micro-batch, gradients "
           "accumulated (b-1 negatives per row whatever k)")
    a("--steps", type=int, default=500, help="optimizer steps")
    a("--batch-size", type=int, default=32, help="micro-batch b: what fits in memory at once")
    a("--accum-steps", type=int, default=2, help="k micro-batches per optimizer step: window N = k*b")
    a("--lr", type=float, default=5e-4, help="peak learning rate (1e-3 can collapse both towers to a constant)")
    a("--warmup-steps", type=int, default=None,
      help="linear learning-rate warm-up, then cosine to lr/10 (default: a sixth of --steps, 83 of 500)")
    a("--weight-decay", type=float, default=0.05, help="AdamW decay (not on norms, biases, embeddings, logit_scale)")
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    a("--augment", action=argparse.BooleanOptionalAction, default=True,
      help="radiograph-safe augmentation (data.train_augment)")
    # the method's knobs
    a("--alpha", type=float, default=0.4, help="weight of the teacher's soft targets (0 = hard targets)")
    a("--alpha-warmup", type=int, default=None,
      help="steps over which alpha rises linearly from 0, as ALBEF (Li et al. 2021) over its first "
           "epoch (default: the learning-rate warm-up's)")
    a("--momentum", type=float, default=0.98,
      help="teacher EMA momentum m (a half-life of 34 steps; ALBEF's 0.995 trails a 500-step run by a quarter of it)")
    a("--momentum-schedule", default="constant", choices=["constant", "cosine"],
      help="cosine: m rises to 1 over training (MoCo v3)")
    a("--momentum-half-life", type=float, default=None, metavar="FRACTION",
      help="set m from the teacher's half-life as a fraction of the run, m = 0.5^(1/(FRACTION*steps)), "
           "so its lag scales with the run (replaces --momentum; 0.98 is 0.07 of 500 steps)")
    a("--queue-size", type=queue_size_arg, default=0,
      help="K, teacher features kept as extra negatives (0 = none: at this repository's budgets the "
           "queue did not help, docs/experiments.md 'Half the cost'; auto: the largest multiple of the window "
           f"<= n/8 and <= {QUEUE_CAP} for n training pairs, 2048 on the synthetic set)")
    a("--queue-start", type=int, default=None, metavar="STEP",
      help="the queue fills and joins the bank from this step on; before it, the window's negatives "
           "only, while the teacher's features change too fast to be negatives (SwAV, Caron et al. "
           "2020, starts its queue late; default: the end of the learning-rate warm-up, "
           "--warmup-steps; 0 = from the first step)")
    a("--duplicate-aware", action=argparse.BooleanOptionalAction, default=True,
      help="identical reports are all positives, for MSD and CLIP alike (--no-duplicate-aware: "
           "a pair's own report alone, one-hot)")
    # running
    a("--seed", type=int, default=0, help="seed for the model, the data order and augmentation")
    a("--device", default="auto", help="auto (cuda, else mps, else cpu), or cpu, cuda, cuda:1, mps")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
      help="auto: bf16 autocast on CUDA (fp16 + grad scaler where bf16 is missing), fp32 elsewhere")
    a("--compile", action="store_true", help="torch.compile the student (CUDA: faster after warm-up)")
    a("--resume", action="store_true", help="continue OUT/ckpt.pt exactly where it stopped")
    a("--save-every", type=int, default=200,
      help="write OUT/ckpt.pt every this many steps, and at the end and on Ctrl-C (0 = only then)")
    a("--eval-every", type=int, default=200, help="quick evaluation every this many steps (0 = off)")
    a("--log-every", type=int, default=10, help="print and log a metrics row every this many steps")
    a("--eval-per-class", type=int, default=200, help="final synthetic benchmark: zero-shot images per class")
    a("--eval-retrieval", type=int, default=1000, help="final synthetic benchmark: held-out retrieval pairs")
    # evaluation on your own data (eval.py's options): replaces the synthetic benchmark
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
    # Hooks for the tests, hidden from --help: save the first step's gradients (torchrun against one
    # process), and send this process a real Ctrl-C or SIGKILL after a chosen step.
    a("--grad-dump", default=None, help=argparse.SUPPRESS)
    a("--interrupt-at", type=int, default=None, help=argparse.SUPPRESS)
    a("--kill-at", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # float() accepts "nan" and "inf"; either would reach AdamW or the loss and fail far from here
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            p.error(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.lr <= 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.report_noise <= 1:
        p.error(f"--report-noise must be in [0, 1], got {args.report_noise}")
    if args.report_noise > 0 and args.train_manifest:
        p.error(f"--report-noise {args.report_noise:g} is for the synthetic set only, not "
                f"--train-manifest {args.train_manifest}: a manifest's reports are used as they are")
    for name in ("weight_decay", "max_grad_norm", "save_every", "eval_every"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.image_size is None:
        args.image_size = PRESETS[args.preset]["image_size"]
    for name in ("steps", "batch_size", "accum_steps", "image_size", "log_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
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
    patch = PRESETS[args.preset]["patch_size"]
    if args.image_size % patch:
        p.error(f"--image-size {args.image_size} is not divisible by the {args.preset} preset's "
                f"patch size {patch}: use a multiple of {patch}, e.g. {args.image_size // patch * patch or patch}")
    return p, args


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
