"""Momentum self-distillation (MSD) image-report pretraining on one GPU (or a CPU), top to bottom.

    python train.py                                   # synthetic chest X-rays, tiny model, ~3 min on 2 CPU cores
    python train.py --preset small --image-size 128   # a consumer GPU
    python train.py --train-manifest data/train.csv   # your own image-report pairs
    torchrun --nproc_per_node=2 train.py ...          # DDP, one process per GPU (or CPU share)

This file glues the method's files into one loop; read it in order: the hyperparameters (every
option, with its default), `train` (the run's stages, then the loop: one optimizer step per window
of k micro-batches), then what the loop calls. The method: model.py (the two encoders),
momentum.py (the EMA teacher), loss.py (the bank and the soft targets), accumulate.py (one step
over k micro-batches). Around it: data.py (augmentation, report ids, tokenizer), eval.py (the
benchmark), synthetic/ (the generated data set), manifests/ (your data), plumbing/ (option checks,
the stages before the loop, checkpoints, device and precision).
"""

import argparse
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import data
from accumulate import NonFiniteLossError, clip_naive_step, clip_step, msd_step
from eval import EvalSettings, evaluate, format_table
from loss import FeatureQueue
from manifests.read import ManifestError
from model import PRESETS, DualEncoder, param_groups
from momentum import make_teacher, momentum_at, momentum_for_half_life
from plumbing.checkpoint import restore, training_state
from plumbing.options import (QUEUE_CAP, HelpFormatter, add_evaluation_and_test_options, check,
                              queue_size_arg)
from evaluation.sets import check_benchmark_options
from plumbing.prepare import (claim_folders, describe_run, drop_rows_after, load_benchmark,
                              load_init_weights, load_training_data, read_init_source,
                              resume_or_start, resumed_note, size_the_queue, tokenize_reports)
from plumbing.progress import append_row, log_step
from plumbing.runtime import (Clock, InputError, StopFlag, WriteError, fmt_time, leave_distributed,
                              pick_precision, save_atomic, send_signal_to_self, setup_distributed,
                              write_text)


# -----------------------------------------------------------------------------
# The hyperparameters: every option of `python train.py --help`, with its default.

def build_parser():
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    # what to train on and where to write
    a("--out", default="out", help="folder for ckpt.pt, tokenizer.json, metrics.jsonl, eval.json")
    a("--train-manifest", default=None, metavar="CSV",
      help="train on this image,text manifest instead of the synthetic set (see README)")
    a("--n-train", type=int, default=20000,
      help="synthetic pairs to render (the default 32,000 samples see n pairs 32,000 / n times)")
    a("--report-noise", type=float, default=0.0, metavar="P",
      help="noisy synthetic reports: each finding left out with probability P, another study's "
           "report with P/2; labels and evaluation sets stay clean (docs/data.md)")
    a("--data-cache", default="data_cache",
      help="folder for rendered synthetic sets and decoded manifests ('' = none: decode into memory)")
    a("--workers", type=int, default=0, help="processes rendering or decoding images (0 = all cores)")
    # the model
    a("--preset", default="tiny", choices=sorted(PRESETS), help="model size (model.py PRESETS)")
    a("--image-size", type=int, default=None, help="image side in pixels (default: the preset's)")
    a("--patch-size", type=int, default=None, help="ViT patch side (default: the preset's); maps: image/patch")
    a("--channels", type=int, default=1, choices=[1, 3], help="1 grayscale, 3 RGB")
    a("--stem", default="conv", choices=["conv", "patch"], help="ViT patches: stride-2 convs, or one p x p")
    a("--pool", default="max", choices=["max", "mean", "attn", "cls"], help="image vector over patches")
    a("--registers", type=int, default=0, metavar="R", help="R extra ViT tokens, never pooled")
    a("--attention-window", type=int, default=0, metavar="W", help="odd W: a patch sees W x W patches")
    a("--vocab-size", type=int, default=2048, help="tokenizer vocabulary trained on the reports")
    a("--init-from", default=None, metavar="RUN",
      help="a new run from another run's weights (its folder or ckpt.pt, a local path): its student, "
           "its EMA teacher (a CLIP run has none: MSD's teacher then starts equal to the student) and "
           "its tokenizer; a fresh optimizer and schedule on this run's data (--steps 0: evaluate it)")
    # the optimisation
    a("--method", default="msd", choices=["msd", "clip", "clip-naive"],
      help="msd: momentum self-distillation. clip: CLIP's exact gradient over the whole window "
           "(a feature cache: one more forward); clip-naive: CLIP per micro-batch (b-1 negatives)")
    a("--steps", type=int, default=500, help="optimizer steps")
    a("--batch-size", type=int, default=32, help="micro-batch b: what fits in memory at once")
    a("--accum-steps", type=int, default=2, help="k micro-batches per optimizer step: window N = k*b")
    a("--lr", type=float, default=2.5e-4, help="peak learning rate (experiments/ladder.py chose it; 1e-3 can collapse)")
    a("--warmup-steps", type=int, default=None,
      help="linear learning-rate warm-up, then cosine to lr/10 (default: a sixth of --steps, 83 of 500)")
    a("--weight-decay", type=float, default=0.05, help="AdamW decay (not on norms, biases, embeddings, logit_scale)")
    a("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0 = off)")
    a("--augment", action=argparse.BooleanOptionalAction, default=True, help="radiograph-safe augmentation")
    a("--augment-shift", type=float, default=None, metavar="F", help=f"largest shift, share of side ({data.TRANSLATE})")
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
      help="K teacher features kept as extra negatives (0: none, docs/experiments.md; auto: the largest "
           f"multiple of the window <= n/8 and <= {QUEUE_CAP} for n pairs, 2048 on the synthetic set)")
    a("--queue-start", type=int, default=None, metavar="STEP",
      help="the queue joins the bank from this step on, once the teacher's features change slowly "
           "enough to be negatives (SwAV starts its queue late; default: --warmup-steps; 0 = at once)")
    a("--word-patch", type=float, default=0.0, help="weight of a word-patch term (loss.word_patch_loss; 0: off)")
    a("--duplicate-aware", action=argparse.BooleanOptionalAction, default=True,
      help="identical reports are all positives, for MSD and CLIP alike (--no-duplicate-aware: "
           "a pair's own report alone, one-hot)")
    # running
    a("--seed", type=int, default=0, help="seed for the model, the data order and augmentation")
    a("--device", default="auto", help="auto (cuda, else mps, else cpu), or cpu, cuda, cuda:1, mps")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
      help="auto: bf16 autocast where the card has bf16 tensor cores (compute capability 8.0+), "
           "fp16 + loss scaler on older CUDA cards, fp32 elsewhere")
    a("--compile", action="store_true", help="torch.compile the student (CUDA: faster after warm-up)")
    a("--resume", action="store_true", help="continue OUT/ckpt.pt exactly where it stopped")
    a("--save-every", type=int, default=200,
      help="write OUT/ckpt.pt every this many steps, and at the end and on Ctrl-C (0 = only then)")
    a("--eval-every", type=int, default=200, help="quick evaluation every this many steps (0 = off)")
    a("--log-every", type=int, default=10, help="print and log a metrics row every this many steps")
    a("--eval-per-class", type=int, default=200, help="final synthetic benchmark: zero-shot images per class")
    a("--eval-retrieval", type=int, default=1000, help="final synthetic benchmark: held-out retrieval pairs")
    add_evaluation_and_test_options(p)    # your evaluation sets (eval.py's), the tests' hooks
    return p


def get_args(argv=None):
    """(parser, args), every mistake in the arguments alone already refused as one line."""
    parser = build_parser()
    return parser, check(parser, parser.parse_args(argv))


def main(argv=None):
    parser, args = get_args(argv)
    try:
        return train(args)
    except (InputError, ManifestError) as e:   # the user's input, not the code: one line, exit 2
        parser.error(str(e))
    except WriteError as e:                          # the disk or a permission: one line, exit 1
        print(f"{parser.prog}: error: {e}", file=sys.stderr, flush=True)
        return 1


def train(args):
    try:
        run = setup_distributed(args.device)
    except ValueError as e:
        raise InputError(f"--device {e}") from None
    log = print if run.master else (lambda *a, **k: None)
    lock = claim_folders(args, run)                   # one run per --out, before touching it
    ckpt = resume_or_start(args)                      # every check of the checkpoint, first
    init = read_init_source(args)                     # --init-from: the weights to start from
    prompts = check_benchmark_options(args.eval_manifest, args.prompts, args.retrieval_manifest,
                                      args.grounding_manifest)
    torch.manual_seed(args.seed)                      # the same initial model on every rank

    t0 = time.time()
    pairs = load_training_data(args, run, log)        # {"images" uint8, "texts", "source", ...}
    queue_note = size_the_queue(args, ckpt, len(pairs["texts"]), run.world)
    tokenizer, cfg = tokenize_reports(args, pairs, ckpt, run, init, log)
    log(f"data: {len(pairs['texts'])} pairs from {pairs['source']}, "
        f"{len(set(pairs['ids'].tolist()))} distinct reports, vocabulary {cfg.vocab_size}, "
        f"ready in {time.time() - t0:.1f}s", flush=True)
    zs, ret, gr = load_benchmark(args, prompts, pairs.get("label_names"), run, log)
    quick = not (zs is False and ret is False)       # False, False: a manifest without eval sets

    parts = build(args, cfg, run, ckpt, init, log)     # student, teacher, queue, optimizer, ...
    del ckpt, init
    log(describe_run(args, parts, run, queue_note), flush=True)

    # ---- the loop: one optimizer step per window of k micro-batches ------------------------------
    step, stop, clock, status = parts.step, StopFlag(), Clock(), 0
    while step < args.steps:
        lr, alpha = lr_at(step, args), alpha_at(step, args)
        m = momentum_at(step, args.steps, parts.base_momentum, args.momentum_schedule)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        t = time.time()
        batches = window(pairs, step, args, run)
        try:
            loss = optimizer_step(parts, batches, args, step, alpha, m)
        except NonFiniteLossError as e:
            log(f"error: {e} at step {step}. Stopping; the last good checkpoint is "
                f"{parts.ckpt_path if os.path.exists(parts.ckpt_path) else '(none was written yet)'}. "
                f"Try a lower --lr or --precision fp32.", flush=True)
            status = 1
            break
        if args.grad_dump and step == 0 and run.master:
            save_atomic({n: p.grad.detach().cpu() for n, p in parts.student.named_parameters()},
                        args.grad_dump)
        step += 1
        if step in (args.interrupt_at, args.kill_at):          # the tests' Ctrl-C and power cut
            send_signal_to_self("interrupt" if step == args.interrupt_at else "kill")
        clock.step_done(time.time() - t, loss.item())          # .item() waits: the time is honest

        if run.master and (step % args.log_every == 0 or step == args.steps):
            log_step(parts, args, run, step, clock, lr, alpha, m)
        if (run.master and quick and args.eval_every and step % args.eval_every == 0
                and step < args.steps):
            with clock.paused():                                 # evaluation stays out of the ETA
                quick_check(parts, tokenizer, args, run, step, zs, ret, log)
        stopping = stop.any_rank(run.device)                   # every rank stops after this step
        if stopping or step == args.steps or (args.save_every and step % args.save_every == 0):
            save_checkpoint(parts, args, run, cfg, step)
        if stopping:
            log(f"saved {parts.ckpt_path} at step {step}; continue with the same command plus --resume")
            break

    if step == args.steps == 0:                       # --init-from with --steps 0: the start, saved
        save_checkpoint(parts, args, run, cfg, step)
    if run.master and status == 0 and step == args.steps:
        final_report(parts, tokenizer, args, run, (zs, ret, gr), clock, log)
    if run.ddp:
        leave_distributed(parts)                      # together, and the group freed while alive
    lock.release()
    return status


# -----------------------------------------------------------------------------
# The model, its teacher and the optimizer.


@dataclass
class Parts:
    """What the loop steps: the student (and `model`, the same one compiled or DDP-wrapped), the
    EMA teacher and its queue (None for CLIP), the optimizer and the precision."""
    student: DualEncoder
    model: torch.nn.Module
    teacher: torch.nn.Module
    queue: FeatureQueue
    optimizer: torch.optim.Optimizer
    autocast: object
    scaler: object
    precision: str
    base_momentum: float
    step: int
    ckpt_path: str
    metrics_path: str
    saved_step: int = None           # the step of the checkpoint on disk that is known to be good
    skipped: int = 0                 # fp16 steps the GradScaler skipped (overflow), this process

    def still_good(self, error):
        """A WriteError with what the user still has and what to do, for a write that failed."""
        good = ("no checkpoint was written yet: free space, then run the same command again"
                if self.saved_step is None else f"{self.ckpt_path} of step {self.saved_step} is "
                f"intact: free space, then run the same command with --resume")
        return WriteError(f"{error}; {good}")


def build(args, cfg, run, ckpt, init, log):
    """The student, its teacher and queue, the optimizer; restored from `ckpt` when resuming, the
    weights from `init` (--init-from) for a new run that starts from another's."""
    device = run.device
    student = DualEncoder(cfg).to(device)
    msd = args.method == "msd"
    teacher = make_teacher(student) if msd else None
    queue = FeatureQueue(args.queue_size, cfg.embed_dim).to(device) if msd else None
    autocast, scaler, precision = pick_precision(args.precision, device)
    optimizer = torch.optim.AdamW(param_groups(student, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    parts = Parts(student, student, teacher, queue,
                  optimizer=optimizer, autocast=autocast, scaler=scaler, precision=precision,
                  base_momentum=(momentum_for_half_life(args.momentum_half_life, args.steps)
                                 if args.momentum_half_life is not None else args.momentum),
                  step=0, ckpt_path=os.path.join(args.out, "ckpt.pt"),
                  metrics_path=os.path.join(args.out, "metrics.jsonl"))
    if init is not None:
        load_init_weights(init, student, teacher)
        log(f"started from {init['path']}: its student{' and teacher' if init['teacher'] else ''}"
            f"{', the teacher a copy of the student' if teacher is not None and not init['teacher'] else ''}")
    if ckpt is None:
        torch.manual_seed(args.seed + run.rank)       # each rank augments differently
    else:
        parts.step = restore(ckpt, student=student, teacher=teacher, queue=queue,
                             optimizer=optimizer, scaler=scaler, rank=run.rank, device=device)
        log(resumed_note(ckpt, parts.ckpt_path, device, precision))
        parts.saved_step = parts.step
    if run.master:
        drop_rows_after(parts.metrics_path, parts.step)
    if args.compile:
        parts.model = torch.compile(parts.model)
    if run.ddp:
        parts.model = torch.nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[device.index] if device.type == "cuda" else None)
    return parts


# -----------------------------------------------------------------------------
# What the loop calls.

def lr_at(step, args):
    """Linear warm-up, then a half cosine from lr down to lr / 10 (nanoGPT's schedule)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.lr / 10 + 0.5 * (args.lr - args.lr / 10) * (1 + math.cos(math.pi * min(progress, 1.0)))


def alpha_at(step, args):
    """ALBEF warms α up from 0: an untrained teacher's soft targets are noise."""
    if args.alpha_warmup <= 0:
        return args.alpha
    return args.alpha * min(1.0, step / args.alpha_warmup)


@functools.lru_cache(maxsize=1)
def epoch_order(n, seed, epoch):
    """A fresh permutation of the n training items per epoch, a function of (seed, epoch) alone, so
    a resumed run sees the same order without storing it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def window_indices(step, n, args, rank, world):
    """The items of this rank's window at optimizer step `step`. The global window of world*N items
    is a contiguous slice of the epoch's permutation; rank r takes the r-th N of it. So the data a
    step sees depends only on the step: that is the data position a checkpoint needs."""
    N = args.batch_size * args.accum_steps
    per_epoch = n // (N * world)
    epoch, w = divmod(step, per_epoch)
    start = (w * world + rank) * N
    return epoch_order(n, args.seed, epoch)[start:start + N]


def window(pairs, step, args, run):
    """This rank's window at `step` as k micro-batches (images, tokens, report ids) on the device.
    The window is gathered in uint8 on the host, then converted and augmented on the device: a GPU
    receives a quarter of the bytes and augments the whole window in a few kernels."""
    idx = window_indices(step, len(pairs["texts"]), args, run.rank, run.world)
    images = pairs["images"][idx].to(run.device, non_blocking=True).float() / 255   # (N, C, H, W)
    if args.augment:
        shift = data.TRANSLATE if args.augment_shift is None else args.augment_shift
        images = data.train_augment(images, shift)
    batches = []
    for im, tok, rid in zip(*(t.split(args.batch_size)
                              for t in (images, pairs["tokens"][idx], pairs["ids"][idx]))):
        tok = data.trim_padding(tok, multiple=16 if args.compile else 1)
        batches.append((im, *(t.to(run.device, non_blocking=True) for t in (tok, rid))))
    return batches


def optimizer_step(parts, batches, args, step, alpha, m):
    """One optimizer step of the chosen method over the window (accumulate.py). In fp16, a step
    whose scaled gradients overflowed is skipped by the GradScaler (which then halves its scale):
    counted in parts.skipped and logged."""
    common = dict(duplicate_aware=args.duplicate_aware, autocast=parts.autocast,
                  scaler=parts.scaler, max_grad_norm=args.max_grad_norm)
    scale = parts.scaler.get_scale() if parts.scaler is not None else None
    if args.method == "msd":
        bank_queue = parts.queue if step >= args.queue_start else None   # the window alone before
        loss = msd_step(parts.model, parts.teacher, bank_queue, parts.optimizer, batches,
                        alpha=alpha, momentum=m, word_patch=args.word_patch, **common)
    else:
        step_fn = clip_step if args.method == "clip" else clip_naive_step  # exact, or per micro-batch
        loss = step_fn(parts.model, parts.optimizer, batches, **common)
    if scale is not None and parts.scaler.get_scale() < scale:
        parts.skipped += 1
    return loss


def quick_check(parts, tokenizer, args, run, step, zs, ret, log):
    """A quick zero-shot check (5 x 50 synthetic images, or the user's set), or retrieval when only
    a --retrieval-manifest was given; logged and appended to metrics.jsonl."""
    t = time.time()
    res = evaluate(parts.student, tokenizer, run.device, args.image_size, zs=zs, ret=ret,
                   quick=True, settings=EvalSettings(precision=parts.precision))
    if "zero_shot" in res:
        z = res["zero_shot"]
        row = {"step": step, "zero_shot_accuracy": z["accuracy"], "zero_shot_auc": z["auc"]}
        said = f"quick zero-shot: accuracy {z['accuracy']:.3f}, AUC {z['auc']:.3f}"
    else:
        r = res["retrieval"]
        row = {"step": step, "retrieval_i2t_r1": r["i2t_r1"], "retrieval_t2i_r1": r["t2i_r1"]}
        said = f"quick retrieval: image->text R@1 {r['i2t_r1']:.3f}, text->image R@1 {r['t2i_r1']:.3f}"
    log(f"step {step:5d} {said} ({time.time() - t:.1f}s)", flush=True)
    append_row(parts, row)


def save_checkpoint(parts, args, run, cfg, step):
    """Every rank takes part (their random states are gathered); rank 0 writes."""
    device = run.device
    rng = {"torch": [torch.get_rng_state()],
           "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}
    if run.ddp:
        gathered = [None] * run.world
        dist.all_gather_object(gathered, rng)
        rng = {k: [g[k][0] for g in gathered] if rng[k] else [] for k in rng}
    if run.master:
        state = training_state(
            student=parts.student, teacher=parts.teacher, queue=parts.queue,
            optimizer=parts.optimizer, scaler=parts.scaler, step=step,
            samples_seen=step * args.batch_size * args.accum_steps * run.world, rng=rng,
            model_cfg=cfg, args=args, device_type=device.type, precision=parts.precision)
        try:
            save_atomic(state, parts.ckpt_path)
        except WriteError as e:
            raise parts.still_good(e) from None
        parts.saved_step = step


def final_report(parts, tokenizer, args, run, benchmark, clock, log):
    """The full benchmark on the final model, printed and written to eval.json."""
    zs, ret, gr = benchmark
    written = f"{parts.ckpt_path}, {os.path.join(args.out, 'tokenizer.json')} and {parts.metrics_path}"
    if zs is False and ret is False and gr is False:
        log(f"training done in {fmt_time(clock.elapsed())}; not evaluated (no --eval-manifest/"
            f"--retrieval-manifest given), so no eval.json: evaluate later with python eval.py "
            f"--checkpoint {args.out} --eval-manifest CSV --prompts JSON --retrieval-manifest CSV")
        log(f"wrote {written}")
        return
    log(f"training done in {fmt_time(clock.elapsed())}; evaluating the final model...", flush=True)
    settings = EvalSettings(n_per_class=args.eval_per_class, n_retrieval=args.eval_retrieval,
                            n_grounding=args.eval_grounding, precision=parts.precision)
    results = evaluate(parts.student, tokenizer, run.device, args.image_size, zs=zs, ret=ret, gr=gr,
                       settings=settings, log=lambda s: log(s, flush=True))
    log(format_table(results))
    try:
        write_text(os.path.join(args.out, "eval.json"), json.dumps(results, indent=1))
    except WriteError as e:
        raise WriteError(f"{e}; {parts.ckpt_path} of step {parts.saved_step} is intact: free "
                         f"space, then evaluate it with python eval.py --checkpoint {args.out} "
                         f"--json {os.path.join(args.out, 'eval.json')}") from None
    log(f"wrote {written.replace(' and ', ', ')} and eval.json")


if __name__ == "__main__":
    sys.exit(main())
