"""Momentum self-distillation (MSD) image-report pretraining on one GPU (or a CPU), top to bottom.

    python train.py                                   # synthetic chest X-rays, tiny model, ~3 min on 2 CPU cores
    python train.py --preset small --image-size 128   # a consumer GPU
    python train.py --train-manifest data/train.csv   # your own image-report pairs
    torchrun --nproc_per_node=2 train.py ...          # DDP, one process per GPU (or CPU share)

The pieces: model.py (the two encoders), momentum.py (the EMA teacher), loss.py (queue and soft
targets), accumulate.py (one optimizer step over k micro-batches), synthetic.py (the generated
data set), data.py (manifests, tokenizer, augmentation), eval.py (the benchmark), options.py (the
command line and its checks), checkpoint.py (saving and resuming), runtime.py (device, precision,
memory). This file only glues them: `main` reads as the run's stages, then the loop.
"""

import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from evaluation import sets as eval_sets
import data
from manifests import read as manifest
import eval as evaluation
from synthetic import dataset as synthetic
from accumulate import NonFiniteLossError, clip_naive_step, clip_step, msd_step, unwrap
from plumbing.checkpoint import read_for_resume, restore, training_state
from loss import FeatureQueue
from model import DualEncoder, make_config, param_groups
from momentum import make_teacher, momentum_at, momentum_for_half_life
from plumbing.options import QUEUE_CAP, default_queue_size, get_args
from plumbing.runtime import (Clock, FolderLock, InputError, StopFlag, WriteError, fmt_time, peak_memory_mb,
                     make_folder, pick_precision, reason, save_atomic, send_signal_to_self, setup_distributed,
                     write_text)


def main(argv=None):
    parser, args = get_args(argv)
    try:
        return train(args)
    except (InputError, manifest.ManifestError) as e:   # the user's input, not the code: one line, exit 2
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
    prompts = eval_sets.check_benchmark_options(args.eval_manifest, args.prompts,
                                                 args.retrieval_manifest, args.grounding_manifest)
    torch.manual_seed(args.seed)                      # the same initial model on every rank

    t0 = time.time()
    pairs = load_training_data(args, run, log)        # {"images" uint8, "texts", "source", ...}
    queue_note = size_the_queue(args, ckpt, len(pairs["texts"]), run.world)
    tokenizer, cfg = tokenize_reports(args, pairs, ckpt, run)
    log(f"data: {len(pairs['texts'])} pairs from {pairs['source']}, "
        f"{len(set(pairs['ids'].tolist()))} distinct reports, vocabulary {cfg.vocab_size}, "
        f"ready in {time.time() - t0:.1f}s", flush=True)
    zs, ret, gr = load_benchmark(args, prompts, pairs.get("label_names"), run, log)
    quick = not (zs is False and ret is False)       # False, False: a manifest without eval sets

    parts = build(args, cfg, run, ckpt, log)           # student, teacher, queue, optimizer, ...
    del ckpt
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
        if stop.requested or step == args.steps or (args.save_every and step % args.save_every == 0):
            save_checkpoint(parts, args, run, cfg, step)
        if stop.requested:
            log(f"saved {parts.ckpt_path} at step {step}; continue with the same command plus --resume")
            break

    if run.master and status == 0 and step == args.steps:
        final_report(parts, tokenizer, args, run, (zs, ret, gr), clock, log)
    if run.ddp:
        # Leave together: a rank that tore down its gloo connections while rank 0 was still
        # evaluating aborted at exit now and then ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    lock.release()
    return status


# -----------------------------------------------------------------------------
# The stages main() runs, in its order.

def claim_folders(args, run):
    """Create --out (and --data-cache) and lock --out for this run (rank 0 holds the lock: the
    ranks of one torchrun are one run). Every mistake is one line naming the option: a path that
    is a file or goes through one, a folder without write permission, a folder another run holds."""
    for option, folder in (("--out", args.out), ("--data-cache", args.data_cache)):
        if folder:
            make_folder(option, folder)
    if not run.master:
        return FolderLock.none()
    try:
        return FolderLock(args.out)
    except OSError as e:
        raise InputError(f"--out {args.out}: cannot create its lock file ({reason(e)}): choose "
                         f"another --out") from None


def resume_or_start(args):
    """The checkpoint --resume continues (its settings already compared with these), or None for a
    new run, which may not overwrite one. Raises InputError before any data is prepared."""
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if not args.resume:
        if os.path.exists(ckpt_path):
            raise InputError(f"{ckpt_path} exists: add --resume to continue it, or choose another --out")
        return None
    if not os.path.exists(ckpt_path):
        raise InputError(f"--resume: no checkpoint at {ckpt_path}")
    tok_path = os.path.join(args.out, "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise InputError(f"--resume: {tok_path} is missing; the checkpoint's token ids mean nothing "
                         f"without the tokenizer it was trained with: copy it back beside ckpt.pt")
    try:
        return read_for_resume(ckpt_path, args)
    except InputError as e:
        raise InputError(f"--resume: {e}") from None


def load_training_data(args, run, log):
    """The training pairs: images as uint8 (a manifest's memory-mapped from its cache), texts, and
    the finding names their labels use. Rank 0 builds a manifest's cache; the others then open it."""
    if not args.train_manifest:
        noise = f", reports with noise {args.report_noise:g}" if args.report_noise else ""
        log(f"rendering {args.n_train} synthetic training studies at {args.image_size} px{noise} "
            f"(cached in {args.data_cache or 'memory only'})...", flush=True)
        pairs = synthetic.load_or_render("train", args.n_train, args.image_size,
                                         cache_dir=args.data_cache or None, workers=args.workers,
                                         report_noise=args.report_noise)
        if "noise" in pairs:
            n = pairs["noise"]
            log(f"data: report noise {args.report_noise:g}: {int(synthetic.changed_reports(n).sum())} "
                f"of {args.n_train} reports changed ({int(n['omitted'].sum())} findings left out, "
                f"{int((n['swapped_from'] >= 0).sum())} reports of another study)", flush=True)
        if args.channels == 3:
            pairs["images"] = pairs["images"].expand(-1, 3, -1, -1)
        return {**pairs, "label_names": list(synthetic.FINDINGS), "source": "synthetic"}
    cache = args.data_cache or None
    if run.ddp and cache and not run.master:
        dist.barrier()
    pairs = manifest.read_pair_manifest(args.train_manifest, args.image_size, args.channels,
                                    cache_dir=cache, workers=args.workers, log=log)
    if run.ddp and cache and run.master:
        dist.barrier()
    return {**pairs, "source": args.train_manifest}


def size_the_queue(args, ckpt, n, world):
    """Check the window and the queue against the n training pairs, and resolve --queue-size auto
    (saved resolved, so a --resume with the default compares numbers). Returns a note for the log."""
    window = args.batch_size * args.accum_steps * world
    if window > n:
        raise InputError(f"the window ({world} rank(s) x {args.accum_steps} x {args.batch_size} = "
                         f"{window} pairs) is larger than the training set ({n} pairs)")
    note = ""
    if args.queue_size is None:
        args.queue_size = default_queue_size(n, window)
        note = f" (auto: <= n/8 and {QUEUE_CAP}, a multiple of the window)"
        saved = ckpt["config"]["train"].get("queue_size") if ckpt is not None else args.queue_size
        if saved != args.queue_size:
            raise InputError(f"--resume: the checkpoint's queue holds {saved} features, auto sizes "
                             f"it {args.queue_size} for this training set: add --queue-size {saved}")
    if args.method == "msd" and args.queue_size + window > n:
        raise InputError(f"--queue-size {args.queue_size} plus the window {window} exceeds the "
                         f"training set ({n} pairs): the queue would hold copies of the current "
                         f"pairs as negatives. Use --queue-size <= {max(0, n - window)}")
    return note


def tokenize_reports(args, pairs, ckpt, run):
    """A new run trains a WordPiece tokenizer on its reports (rank 0, saved beside the checkpoint);
    a resumed one reads it back. Adds pairs["tokens"] (n, L) and pairs["ids"] (n,), the report ids
    that duplicate-aware positives compare. Returns (tokenizer, model config)."""
    tok_path = os.path.join(args.out, "tokenizer.json")
    if ckpt is None and run.master:
        write_text(tok_path, data.train_tokenizer(pairs["texts"], args.vocab_size).to_str())
    if ckpt is None and run.ddp:
        dist.barrier()                                # rank 0 wrote tokenizer.json
    try:
        tokenizer = data.load_tokenizer(tok_path)
    except Exception as e:   # the tokenizers library raises a bare Exception for a malformed file
        raise InputError(f"cannot read {tok_path}: {str(e).splitlines()[0]}") from None
    cfg = make_config(args.preset, image_size=args.image_size, in_channels=args.channels,
                      stem=args.stem, pool=args.pool, vocab_size=tokenizer.get_vocab_size())
    if ckpt is not None and ckpt["config"]["model"]["vocab_size"] != cfg.vocab_size:
        raise InputError(f"--resume: {tok_path} has {cfg.vocab_size} tokens, the checkpoint's model "
                         f"{ckpt['config']['model']['vocab_size']}: it is another run's tokenizer")
    pairs["tokens"], _ = data.tokenize(tokenizer, pairs["texts"], cfg.context_length)   # (n, L)
    pairs["ids"] = data.report_ids(pairs["texts"])                                       # (n,)
    return tokenizer, cfg


def load_benchmark(args, prompts, label_names, run, log):
    """What to evaluate on, (zero-shot, retrieval, grounding): the user's sets, the synthetic
    benchmark (None), or nothing (False, when training on a manifest without evaluation sets: the
    synthetic numbers would say nothing about the user's data)."""
    if not (args.eval_manifest or args.retrieval_manifest or args.grounding_manifest):
        if not args.train_manifest:
            return None, None, None
        log("no --eval-manifest/--retrieval-manifest/--grounding-manifest given: skipping "
            "evaluation on the synthetic benchmark, which says nothing about your data (eval.py "
            "can evaluate ckpt.pt later)", flush=True)
        return False, False, False
    zs = ret = gr = None
    if run.master:                                    # rank 0 alone evaluates
        zs, ret = eval_sets.read_benchmark(args.eval_manifest, prompts, args.retrieval_manifest,
                                            args.image_size, args.channels,
                                            cache_dir=args.data_cache or None, log=log)
        if args.grounding_manifest and zs is None:     # grounding alone replaces the synthetic
            zs = ret = False                           # benchmark too
        gr = eval_sets.read_grounding(args.grounding_manifest, args.image_size, args.channels,
                                       others=zs is not None or ret is not None, log=log)
    if prompts and label_names:
        missing = eval_sets.unlabelled_prompt_classes(list(prompts), label_names)
        log(f"prompt classes no training report is labelled with: {missing}" if missing else
            "every prompt class is among the training labels", flush=True)
    return zs, ret, gr


@dataclass
class Parts:
    """What the loop steps: the student (and `model`, the same one compiled or DDP-wrapped), the
    EMA teacher and its queue (None for CLIP), the optimizer and the precision."""
    student: DualEncoder
    model: torch.nn.Module
    teacher: torch.nn.Module
    queue: FeatureQueue
    no_queue: FeatureQueue
    optimizer: torch.optim.Optimizer
    autocast: object
    scaler: object
    precision: str
    base_momentum: float
    step: int
    ckpt_path: str
    metrics_path: str
    saved_step: int = None           # the step of the checkpoint on disk that is known to be good

    def still_good(self, error):
        """A WriteError with what the user still has and what to do, for a write that failed."""
        if self.saved_step is None:
            good = "no checkpoint was written yet: free space, then run the same command again"
        else:
            good = (f"{self.ckpt_path} of step {self.saved_step} is intact: free space, then run "
                    f"the same command with --resume")
        return WriteError(f"{error}; {good}")


def build(args, cfg, run, ckpt, log):
    """The student, its teacher and queue, the optimizer; restored from `ckpt` when resuming."""
    device = run.device
    student = DualEncoder(cfg).to(device)
    msd = args.method == "msd"
    teacher = make_teacher(student) if msd else None
    queue = FeatureQueue(args.queue_size, cfg.embed_dim).to(device) if msd else None
    autocast, scaler, precision = pick_precision(args.precision, device)
    optimizer = torch.optim.AdamW(param_groups(student, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    parts = Parts(student, student, teacher, queue,
                  no_queue=FeatureQueue(0, cfg.embed_dim).to(device),  # the bank before --queue-start
                  optimizer=optimizer, autocast=autocast, scaler=scaler, precision=precision,
                  base_momentum=(momentum_for_half_life(args.momentum_half_life, args.steps)
                                 if args.momentum_half_life is not None else args.momentum),
                  step=0, ckpt_path=os.path.join(args.out, "ckpt.pt"),
                  metrics_path=os.path.join(args.out, "metrics.jsonl"))
    if ckpt is None:
        torch.manual_seed(args.seed + run.rank)       # each rank augments differently
    else:
        parts.step = restore(ckpt, student=student, teacher=teacher, queue=queue,
                             optimizer=optimizer, scaler=scaler, rank=run.rank, device=device)
        log(f"resumed from {parts.ckpt_path} at step {parts.step}")
        was = (ckpt["config"].get("device_type"), ckpt["config"].get("precision"))
        if None not in was and was != (device.type, precision):
            log(f"note: this run computed on {was[0]} in {was[1]} and continues on {device.type} "
                f"in {precision}: the same run, but not bit for bit what it would have computed")
        parts.saved_step = parts.step
    if run.master:
        drop_rows_after(parts.metrics_path, parts.step)
    if args.compile:
        parts.model = torch.compile(parts.model)
    if run.ddp:
        parts.model = torch.nn.parallel.DistributedDataParallel(
            parts.model, device_ids=[device.index] if device.type == "cuda" else None)
    return parts


def drop_rows_after(metrics_path, step):
    """Drop the rows an interrupted run logged after its checkpoint: the resumed run redoes them
    (a new run, step 0, starts the file afresh: rows of a run that died before its first
    checkpoint are not this run's)."""
    if not os.path.exists(metrics_path):
        return
    with open(metrics_path) as f:
        rows = [line for line in f if json.loads(line).get("step", 0) <= step]
    write_text(metrics_path, "".join(rows))


def describe_run(args, parts, run, queue_note):
    """The start-up lines: the model, the device, and what one optimizer step computes."""
    N = args.batch_size * args.accum_steps * run.world
    model = (f"model: {args.preset} preset, {parts.student.num_params() / 1e6:.2f}M parameters, "
             f"{args.image_size} px, {args.channels} channel(s) | device {run.device}, "
             f"{parts.precision}, {run.world} process(es)")
    if args.method == "msd":
        what = "momentum self-distillation"
        queue = f", queue {args.queue_size}{queue_note}"
        if args.queue_start and args.queue_size:
            queue += f" from step {args.queue_start}"
        half_life = (f", half-life {args.momentum_half_life:g} of the run"
                     if args.momentum_half_life else "")
        extra = (f"{queue}, alpha {args.alpha} (warm-up {args.alpha_warmup} steps), momentum "
                 f"{parts.base_momentum:.4g} ({args.momentum_schedule}{half_life})")
    elif args.method == "clip" and N > args.batch_size:
        what = (f"exact accumulation over the window (feature cache), {N - 1} negatives per row, "
                f"2 student forwards per sample")
        extra = ""
    else:
        naive = args.method == "clip-naive"
        what = ("naive accumulation" if naive and args.accum_steps > 1 else "plain CLIP") + (
            ", each micro-batch alone:" if naive else ",") + f" {args.batch_size - 1} negatives per row"
        extra = ""
    what += ", duplicate-aware positives" if args.duplicate_aware else ", one-hot positives"
    method = (f"method: {args.method}: {what} | micro-batch {args.batch_size} x {args.accum_steps} "
              f"accumulation x {run.world} rank(s) = {N} pairs per step{extra} | {args.steps} steps, "
              f"{(args.steps - parts.step) * N} samples to go")
    return f"{model}\n{method}"


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
        images = data.train_augment(images)
    batches = []
    for im, tok, rid in zip(*(t.split(args.batch_size)
                              for t in (images, pairs["tokens"][idx], pairs["ids"][idx]))):
        tok = data.trim_padding(tok, multiple=16 if args.compile else 1)
        batches.append((im, *(t.to(run.device, non_blocking=True) for t in (tok, rid))))
    return batches


def optimizer_step(parts, batches, args, step, alpha, m):
    """One optimizer step of the chosen method over the window (accumulate.py)."""
    common = dict(duplicate_aware=args.duplicate_aware, autocast=parts.autocast,
                  scaler=parts.scaler, max_grad_norm=args.max_grad_norm)
    if args.method == "msd":
        bank_queue = parts.queue if step >= args.queue_start else parts.no_queue
        return msd_step(parts.model, parts.teacher, bank_queue, parts.optimizer, batches,
                        alpha=alpha, momentum=m, **common)
    step_fn = clip_step if args.method == "clip" else clip_naive_step   # exact, or per micro-batch
    return step_fn(parts.model, parts.optimizer, batches, **common)


def log_step(parts, args, run, step, clock, lr, alpha, m):
    per_step = clock.per_step()
    mem = peak_memory_mb(run.device)
    row = {"step": step, "loss": round(clock.loss, 5), "lr": lr, "alpha": alpha, "momentum": m,
           "temperature": round(1 / unwrap(parts.model).logit_scale.exp().item(), 5),
           "samples_per_s": round(args.batch_size * args.accum_steps * run.world / per_step, 1),
           "peak_mem_mb": None if mem is None else round(mem, 1),
           "elapsed_s": round(clock.elapsed(), 1), "eta_s": round((args.steps - step) * per_step, 1)}
    teacher = f"alpha {alpha:.2f} | m {m:.4f} | " if args.method == "msd" else ""  # CLIP has neither
    print(f"step {step:5d}/{args.steps} | loss {clock.loss:.4f} | lr {lr:.2e} | {teacher}"
          f"temp {row['temperature']:.4f} | {row['samples_per_s']:.0f} samples/s | "
          f"mem {'n/a' if mem is None else f'{mem:.0f} MB'} | {fmt_time(row['elapsed_s'])} elapsed, "
          f"{fmt_time(row['eta_s'])} left", flush=True)
    append_row(parts, row)


def append_row(parts, row):
    try:
        write_text(parts.metrics_path, json.dumps(row) + "\n", mode="a")
    except WriteError as e:
        raise parts.still_good(e) from None


def quick_check(parts, tokenizer, args, run, step, zs, ret, log):
    """A quick zero-shot check (5 x 50 synthetic images, or the user's set), or retrieval when only
    a --retrieval-manifest was given; logged and appended to metrics.jsonl."""
    t = time.time()
    res = evaluation.evaluate(parts.student, tokenizer, run.device, args.image_size, zs=zs, ret=ret,
                              quick=True)
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
    results = evaluation.evaluate(parts.student, tokenizer, run.device, args.image_size, zs=zs,
                                  ret=ret, gr=gr, n_per_class=args.eval_per_class,
                                  n_retrieval=args.eval_retrieval, log=lambda s: log(s, flush=True))
    log(evaluation.format_table(results))
    try:
        write_text(os.path.join(args.out, "eval.json"), json.dumps(results, indent=1))
    except WriteError as e:
        raise WriteError(f"{e}; {parts.ckpt_path} of step {parts.saved_step} is intact: free "
                         f"space, then evaluate it with python eval.py --checkpoint {args.out} "
                         f"--json {os.path.join(args.out, 'eval.json')}") from None
    log(f"wrote {written.replace(' and ', ', ')} and eval.json")


if __name__ == "__main__":
    sys.exit(main())
