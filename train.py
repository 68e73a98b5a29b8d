"""Momentum self-distillation (MSD) image-report pretraining on one GPU (or a CPU), top to bottom.

    python train.py                                   # synthetic chest X-rays, tiny model, ~4 min on 2 CPU cores
    python train.py --preset small --image-size 128   # a consumer GPU
    python train.py --train-manifest data/train.csv   # your own image-report pairs
    torchrun --nproc_per_node=2 train.py ...          # DDP, one process per GPU (or CPU share)

The pieces: model.py (the two encoders), momentum.py (the EMA teacher), loss.py (queue and soft
targets), accumulate.py (one optimizer step over k micro-batches), synthetic.py (the generated
data set), data.py (manifests, tokenizer, augmentation), eval.py (the benchmark), options.py (the
command line and its checks). This file only glues them: data, the loop, logging, checkpoints.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import resource
import signal
import sys
import time

import torch
import torch.distributed as dist

import data
import eval as evaluation
import synthetic
from accumulate import NonFiniteLossError, clip_naive_step, clip_step, msd_step, unwrap
from loss import FeatureQueue
from model import DualEncoder, make_config
from momentum import make_teacher, momentum_at, momentum_for_half_life
from options import QUEUE_CAP, RESUME_MAY_CHANGE, default_queue_size, get_args


# -----------------------------------------------------------------------------
# Small pieces the loop uses.

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


def param_groups(model, weight_decay):
    """Decay the weight matrices; leave norms, biases, embeddings and logit_scale alone (decaying a
    LayerNorm gain or a position table towards zero only fights the model)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        embedding = any(key in name for key in ("token_embed", "pos_embed", "cls_token"))
        (no_decay if p.ndim < 2 or embedding or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


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


def unlabelled_prompt_classes(prompt_classes, label_names):
    """The prompt classes that no training pair is labelled with (names compared without case, as
    manifests compare them). Zero-shot on such a class tests transfer to a finding the labels never
    name: worth knowing, not wrong."""
    seen = {name.lower() for name in label_names}
    return [c for c in prompt_classes if c.lower() not in seen]


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # the process's maximum resident size (Linux reports kB, macOS bytes)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def save_atomic(obj, path):
    """Write to a temporary file, then rename: an interrupted save never leaves a torn file."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def pick_device(name):
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(args, device):
    """(autocast factory, GradScaler or None, name)."""
    precision = args.precision
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext, None, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    autocast = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
    # fp16 has a narrow exponent range: scale the loss so small gradients do not flush to zero.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return autocast, scaler, precision


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to stop after the step in progress, save and exit."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        if self.requested:                 # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        self.requested = True
        print("\nstop requested: finishing this step, saving a checkpoint, then exiting "
              "(Ctrl-C again to quit without saving)", flush=True)


# -----------------------------------------------------------------------------

def main(argv=None):
    parser, args = get_args(argv)
    # ---- distributed setup: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK --------------------------
    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        device = pick_device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        rank, world = 0, 1
        device = pick_device(args.device)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    ckpt_path = os.path.join(args.out, "ckpt.pt")
    tok_path = os.path.join(args.out, "tokenizer.json")
    base_m = (momentum_for_half_life(args.momentum_half_life, args.steps)
              if args.momentum_half_life is not None else args.momentum)
    try:   # the user's evaluation data: paths and prompts now, the images once the training set is in
        prompts = evaluation.check_benchmark_options(args.eval_manifest, args.prompts,
                                                     args.retrieval_manifest)
    except evaluation.InputError as e:
        parser.error(str(e))
    if args.resume and not os.path.exists(ckpt_path):
        parser.error(f"--resume: no checkpoint at {ckpt_path}")
    if not args.resume and os.path.exists(ckpt_path):
        parser.error(f"{ckpt_path} exists: add --resume to continue it, or choose another --out")
    ckpt = None
    if args.resume:
        try:
            ckpt = evaluation.read_checkpoint(ckpt_path, "delete it to start the run again from step "
                                              "0, or use another --out")
        except evaluation.InputError as e:
            parser.error(f"--resume: {e}")
        needed = {"student", "optimizer", "step", "rng", "config"}
        if not (isinstance(ckpt, dict) and needed <= ckpt.keys()
                and isinstance(ckpt["config"], dict) and "train" in ckpt["config"]):
            parser.error(f"--resume: {ckpt_path} is not a train.py checkpoint (no training settings "
                         f"or weights in it): delete it, or use another --out")
        saved = ckpt["config"]["train"]
        # Before clip_step had its feature cache, --method clip over several micro-batches or
        # ranks was naive accumulation; its checkpoints lack the "clip_accumulation" entry.
        if saved.get("method") == "clip" and "clip_accumulation" not in ckpt["config"] and (
                saved.get("accum_steps", 1) > 1 or len(ckpt["rng"]["torch"]) > 1):
            saved = {**saved, "method": "clip-naive"}        # what that run computed
            if args.method != "clip-naive":
                parser.error(f"--resume: {ckpt_path} was trained by an older train.py whose "
                             f"--method clip was naive accumulation (b-1 negatives per row); "
                             f"--method clip is now exact over the window. To continue it as it "
                             f"was trained, pass --method clip-naive")
        # --queue-size auto is resolved from the training set below, then compared.
        changed = {k: (saved.get(k), v) for k, v in vars(args).items()
                   if k not in RESUME_MAY_CHANGE and saved.get(k) != v
                   and not (k == "queue_size" and v is None)}
        if changed:
            parser.error("--resume with different settings than the checkpoint: " +
                         ", ".join(f"--{k.replace('_', '-')} {old} (saved) vs {new}"
                                   for k, (old, new) in changed.items()))
    N = args.batch_size * args.accum_steps            # this rank's window
    torch.manual_seed(args.seed)                      # the same initial model on every rank
    os.makedirs(args.out, exist_ok=True)

    # ---- data: images as uint8 (a manifest's memory-mapped from its cache), reports tokenized once ---
    t0 = time.time()
    if args.train_manifest:
        cache = args.data_cache or None
        if ddp and cache and not master:
            dist.barrier()                            # rank 0 builds the cache; the others then open it
        try:
            train = data.read_pair_manifest(args.train_manifest, args.image_size, args.channels,
                                            cache_dir=cache, workers=args.workers, log=log)
        except data.ManifestError as e:
            parser.error(str(e))
        if ddp and cache and master:
            dist.barrier()
        source = args.train_manifest
    else:
        log(f"rendering {args.n_train} synthetic training studies at {args.image_size} px "
            f"(cached in {args.data_cache or 'memory only'})...", flush=True)
        train = synthetic.load_or_render("train", args.n_train, args.image_size,
                                         cache_dir=args.data_cache or None, workers=args.workers)
        if args.channels == 3:
            train["images"] = train["images"].expand(-1, 3, -1, -1)
        train["label_names"] = list(synthetic.FINDINGS)  # the columns of train["labels"]
        source = "synthetic"
    n = len(train["texts"])
    if N * world > n:
        parser.error(f"the window ({world} rank(s) x {args.accum_steps} x {args.batch_size} = "
                     f"{N * world} pairs) is larger than the training set ({n} pairs)")
    queue_from = ""
    if args.queue_size is None:
        # resolved here and saved resolved, so a --resume with the default compares numbers
        args.queue_size = default_queue_size(n, N * world)
        queue_from = f" (auto: <= n/8 and {QUEUE_CAP}, a multiple of the window)"
        if ckpt is not None and saved.get("queue_size") != args.queue_size:
            parser.error(f"--resume: the checkpoint's queue holds {saved.get('queue_size')} "
                         f"features, auto sizes it {args.queue_size} for this training set: add "
                         f"--queue-size {saved.get('queue_size')}")
    if args.method == "msd" and args.queue_size + N * world > n:
        parser.error(f"--queue-size {args.queue_size} plus the window {N * world} exceeds the "
                     f"training set ({n} pairs): the queue would hold copies of the current pairs "
                     f"as negatives. Use --queue-size <= {max(0, n - N * world)}")
    if ckpt is not None:
        tokenizer = data.load_tokenizer(tok_path)
    else:
        if master:
            tokenizer = data.train_tokenizer(train["texts"], args.vocab_size)
            tokenizer.save(tok_path)
        if ddp:
            dist.barrier()                            # rank 0 wrote tokenizer.json
        tokenizer = data.load_tokenizer(tok_path)
    cfg = make_config(args.preset, image_size=args.image_size, in_channels=args.channels,
                      stem=args.stem, pool=args.pool, vocab_size=tokenizer.get_vocab_size())
    tokens, _ = data.tokenize(tokenizer, train["texts"], cfg.context_length)   # (n, L)
    ids = data.report_ids(train["texts"])                                       # (n,)
    log(f"data: {n} pairs from {source}, {len(set(ids.tolist()))} distinct reports, vocabulary "
        f"{cfg.vocab_size}, ready in {time.time() - t0:.1f}s", flush=True)

    # ---- what to evaluate on: the user's sets, the synthetic benchmark (None), or nothing (False) ----
    zs = ret = None
    if args.eval_manifest or args.retrieval_manifest:
        if master:                                    # rank 0 alone evaluates
            try:
                zs, ret = evaluation.read_benchmark(args.eval_manifest, prompts,
                                                    args.retrieval_manifest, args.image_size,
                                                    args.channels, cache_dir=args.data_cache or None,
                                                    log=log)
            except (evaluation.InputError, data.ManifestError) as e:
                parser.error(str(e))
        if prompts and train.get("label_names"):
            missing = unlabelled_prompt_classes(list(prompts), train["label_names"])
            log(f"prompt classes no training report is labelled with: {missing}" if missing else
                "every prompt class is among the training labels", flush=True)
    elif args.train_manifest:
        zs = ret = False
        log("no --eval-manifest/--retrieval-manifest given: skipping evaluation on the synthetic "
            "benchmark, which says nothing about your data (eval.py can evaluate ckpt.pt later)",
            flush=True)
    skip_eval = zs is False and ret is False

    # ---- model, teacher, queue, optimizer -------------------------------------------------------------
    student = DualEncoder(cfg).to(device)
    teacher = make_teacher(student) if args.method == "msd" else None
    queue = FeatureQueue(args.queue_size, cfg.embed_dim).to(device) if args.method == "msd" else None
    no_queue = FeatureQueue(0, cfg.embed_dim).to(device)   # the bank before --queue-start: window only
    autocast, scaler, precision = pick_precision(args, device)
    optimizer = torch.optim.AdamW(param_groups(student, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    step = 0
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        if teacher is not None:
            teacher.load_state_dict(ckpt["teacher"])
            queue.load_state_dict(ckpt["queue"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"]["torch"][rank])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rank], device)
        log(f"resumed from {ckpt_path} at step {step}")
        del ckpt
    else:
        torch.manual_seed(args.seed + rank)           # each rank augments differently
    model = student
    if args.compile:
        model = torch.compile(model)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics_path = os.path.join(args.out, "metrics.jsonl")
    if master and step > 0 and os.path.exists(metrics_path):
        # drop rows logged after the checkpoint by the run that was interrupted: they are redone
        with open(metrics_path) as f:
            rows = [line for line in f if json.loads(line).get("step", 0) <= step]
        with open(metrics_path, "w") as f:
            f.writelines(rows)

    def checkpoint():
        """Everything the next step depends on: weights, teacher, queue, optimizer, scaler, step,
        RNG of every rank. Tensors and plain Python values only: torch.load(weights_only=True)."""
        rng = {"torch": [torch.get_rng_state()],
               "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}
        if ddp:
            gathered = [None] * world
            dist.all_gather_object(gathered, rng)
            rng = {k: [g[k][0] for g in gathered] if rng[k] else [] for k in rng}
        if master:
            save_atomic({
                "student": student.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "queue": queue.state_dict() if queue is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": step,
                "samples_seen": step * N * world,
                "rng": rng,
                "config": {"model": dataclasses.asdict(cfg), "train": vars(args),
                           "clip_accumulation": "exact"},     # what --method clip means here
            }, ckpt_path)

    def micro_batches():
        idx = window_indices(step, n, args, rank, world)
        # gather the window in uint8 on the host, then convert and augment on the device: a GPU
        # receives a quarter of the bytes and augments the whole window in a few kernels
        images = train["images"][idx].to(device, non_blocking=True).float() / 255   # (N, C, H, W)
        if args.augment:
            images = data.train_augment(images)
        window = (images, tokens[idx], ids[idx])
        batches = []
        for im, tok, rid in zip(*(t.split(args.batch_size) for t in window)):
            tok = data.trim_padding(tok, multiple=16 if args.compile else 1)
            batches.append((im, *(t.to(device, non_blocking=True) for t in (tok, rid))))
        return batches

    n_params = student.num_params()
    log(f"model: {args.preset} preset, {n_params / 1e6:.2f}M parameters, {args.image_size} px, "
        f"{args.channels} channel(s) | device {device}, {precision}, {world} process(es)")
    exact = args.accum_steps > 1 or world > 1            # --method clip needs its feature cache
    what = {"msd": "momentum self-distillation",
            "clip": (f"exact accumulation over the window (feature cache), {N * world - 1} negatives "
                     f"per row, 2 student forwards per sample" if exact
                     else f"plain CLIP, {N - 1} negatives per row"),
            "clip-naive": ("naive accumulation" if args.accum_steps > 1 else "plain CLIP") +
                          f", each micro-batch alone: {args.batch_size - 1} negatives per row"}[args.method]
    method_line = (f"method: {args.method}: {what} | micro-batch {args.batch_size} x {args.accum_steps}"
                   f" accumulation x {world} rank(s) = {N * world} pairs per step")
    if args.method == "msd":
        method_line += (f", queue {args.queue_size}{queue_from}" +
                        (f" from step {args.queue_start}" if args.queue_start and args.queue_size else "") +
                        f", alpha {args.alpha} (warm-up {args.alpha_warmup} steps), momentum {base_m:.4g}"
                        f" ({args.momentum_schedule}" +
                        (f", half-life {args.momentum_half_life:g} of the run" if args.momentum_half_life else "")
                        + ")")
    log(f"{method_line} | {args.steps} steps, {(args.steps - step) * N * world} samples to go", flush=True)

    # ---- the loop -------------------------------------------------------------------------------------
    stop = StopFlag()
    t_start, steps_timed, t_timed = time.time(), 0, 0.0
    exit_code = 0
    while step < args.steps:
        lr, alpha = lr_at(step, args), alpha_at(step, args)
        m = momentum_at(step, args.steps, base_m, args.momentum_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t = time.time()
        batches = micro_batches()
        try:
            if args.method == "msd":
                bank_queue = queue if step >= args.queue_start else no_queue
                loss = msd_step(model, teacher, bank_queue, optimizer, batches, alpha=alpha, momentum=m,
                                duplicate_aware=args.duplicate_aware, autocast=autocast,
                                scaler=scaler, max_grad_norm=args.max_grad_norm)
            else:   # clip: exact over the window (feature cache); clip-naive: per micro-batch
                step_fn = clip_step if args.method == "clip" else clip_naive_step
                loss = step_fn(model, optimizer, batches, autocast=autocast, scaler=scaler,
                               max_grad_norm=args.max_grad_norm)
        except NonFiniteLossError as e:
            log(f"error: {e} at step {step}. Stopping; the last good checkpoint is "
                f"{ckpt_path if os.path.exists(ckpt_path) else '(none was written yet)'}. "
                f"Try a lower --lr or --precision fp32.", flush=True)
            exit_code = 1
            break
        if args.grad_dump and step == 0 and master:
            save_atomic({name: p.grad.detach().cpu() for name, p in student.named_parameters()},
                        args.grad_dump)
        step += 1
        if step == args.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)             # as if the user pressed Ctrl-C now
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)            # as if the machine died: nothing saved
        loss = loss.item()                                  # waits for the device: time is honest
        dt = time.time() - t
        if step > 1:                                        # step 1 includes warm-up / compilation
            steps_timed, t_timed = steps_timed + 1, t_timed + dt

        if master and (step % args.log_every == 0 or step == args.steps):
            sec_per_step = t_timed / steps_timed if steps_timed else dt
            row = {"step": step, "loss": round(loss, 5), "lr": lr, "alpha": alpha, "momentum": m,
                   "temperature": round(1 / unwrap(model).logit_scale.exp().item(), 5),
                   "samples_per_s": round(N * world / sec_per_step, 1),
                   "peak_mem_mb": round(peak_memory_mb(device), 1),
                   "elapsed_s": round(time.time() - t_start, 1),
                   "eta_s": round((args.steps - step) * sec_per_step, 1)}
            teacher_part = f"alpha {alpha:.2f} | m {m:.4f} | " if args.method == "msd" else ""  # CLIP has neither
            log(f"step {step:5d}/{args.steps} | loss {loss:.4f} | lr {lr:.2e} | {teacher_part}"
                f"temp {row['temperature']:.4f} | {row['samples_per_s']:.0f} samples/s | "
                f"mem {row['peak_mem_mb']:.0f} MB | {fmt_time(row['elapsed_s'])} elapsed, "
                f"{fmt_time(row['eta_s'])} left", flush=True)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if (master and args.eval_every and step % args.eval_every == 0 and step < args.steps
                and not skip_eval):
            t_eval = time.time()
            res = evaluation.evaluate(student, tokenizer, device, args.image_size, zs=zs, ret=ret,
                                      quick=True)
            if "zero_shot" in res:
                z = res["zero_shot"]
                row = {"step": step, "zero_shot_accuracy": z["accuracy"], "zero_shot_auc": z["auc"]}
                said = f"quick zero-shot: accuracy {z['accuracy']:.3f}, AUC {z['auc']:.3f}"
            else:                                           # a --retrieval-manifest alone
                r = res["retrieval"]
                row = {"step": step, "retrieval_i2t_r1": r["i2t_r1"], "retrieval_t2i_r1": r["t2i_r1"]}
                said = (f"quick retrieval: image->text R@1 {r['i2t_r1']:.3f}, "
                        f"text->image R@1 {r['t2i_r1']:.3f}")
            log(f"step {step:5d} {said} ({time.time() - t_eval:.1f}s)", flush=True)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            t_start += time.time() - t_eval                 # keep evaluation out of the ETA
        if step % args.save_every == 0 or step == args.steps or stop.requested:
            checkpoint()
        if stop.requested:
            log(f"saved {ckpt_path} at step {step}; continue with the same command plus --resume")
            break

    # ---- the end: the full benchmark on the final model ------------------------------------------------
    if master and exit_code == 0 and step == args.steps and skip_eval:
        log(f"training done in {fmt_time(time.time() - t_start)}; not evaluated (no --eval-manifest/"
            f"--retrieval-manifest given), so no eval.json: evaluate later with python eval.py "
            f"--checkpoint {args.out} --eval-manifest CSV --prompts JSON --retrieval-manifest CSV")
        log(f"wrote {ckpt_path}, {tok_path} and {metrics_path}")
    elif master and exit_code == 0 and step == args.steps:
        log(f"training done in {fmt_time(time.time() - t_start)}; evaluating the final model...",
            flush=True)
        results = evaluation.evaluate(student, tokenizer, device, args.image_size, zs=zs, ret=ret,
                                      n_per_class=args.eval_per_class, n_retrieval=args.eval_retrieval,
                                      log=lambda s: log(s, flush=True))
        with open(os.path.join(args.out, "eval.json"), "w") as f:
            json.dump(results, f, indent=1)
        log(evaluation.format_table(results))
        log(f"wrote {ckpt_path}, {tok_path}, {metrics_path} and eval.json")
    if ddp:
        # Leave together: a rank that tore down its gloo connections while rank 0 was still
        # evaluating aborted at exit now and then ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
