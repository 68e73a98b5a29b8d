"""What momentum self-distillation and exact CLIP accumulation cost: time and memory against plain CLIP.

    python bench.py --json results/bench.json     # CPU: tiny preset, b = 32, k = 1..16
    python bench.py --ks 1,4 --queue-size-extra 0 # two window sizes, no msd-queue rows
    python bench.py --device cuda --preset small --compile --ks 4    # a GPU (bf16 autocast)

For a micro-batch of b pairs and each k in --ks, these ways to take one optimizer step (the kind,
then the accumulate.py step and the negatives per row; train.py's --method in brackets):

    clip        CLIP, batch b       clip_step on one batch of b        b - 1
    clip        CLIP, batch k*b     clip_step on one batch of k*b      k*b - 1 (k times the memory)
    clip-naive  naive accumulation  clip_naive_step on k x b           b - 1          [clip-naive]
    clip-exact  exact accumulation  clip_step on k x b, feature cache  k*b - 1        [clip]
    msd         MSD as train.py     msd_step on k x b, queue K         k*b + K - 1    [msd]
                runs it             (--queue-size, default 0 as train.py's)
    msd-queue   MSD with a queue    the same with K = --queue-size-extra (default 2048, kept full)

Each configuration runs in a fresh process (this file re-invoked with --one CONFIG_JSON): on the
CPU the only honest peak memory is the process's high-water resident size, which never goes down
(on CUDA: torch.cuda.max_memory_allocated). Device and precision as train.py picks them (plumbing/runtime.py).
Inputs are random images and tokens of the right shapes: the cost does not depend on the pictures.

The ratios the method promises (docs/method.md), each against a baseline from the same run:
  - MSD time per sample / CLIP's at the same b: about 4/3 (one extra teacher forward for a student
    forward + backward of about 3 forwards); a queue adds a little;
  - MSD peak memory at k = 16 / at k = 1: about 1 (only N x D teacher features grow with k);
  - CLIP peak memory at batch k*b / MSD's at k micro-batches of b: grows with k.
And of exact CLIP accumulation (GradCache's feature cache), against the same baselines:
  - time per sample / CLIP's at batch b: about 4/3 for k > 1 (one extra student forward without
    gradient); 1 at k = 1, where clip_step is plain CLIP;
  - peak memory / CLIP's at batch k*b: falls with k (one micro-batch of activations).
On CUDA also the model FLOP utilisation (MFU, as nanoGPT logs it): achieved FLOP/s over the card's
peak. Where the time of one step goes, the window's augmentation included: experiments/profile_step.py.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from plumbing import runtime
from accumulate import clip_naive_step, clip_step, msd_step
from loss import FeatureQueue
from model import PAD_ID, DualEncoder, make_config
from momentum import make_teacher

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity), matched in this order
# against torch.cuda.get_device_name(). Anything else: pass --peak-tflops, or MFU prints n/a.
PEAK_TFLOPS_BF16 = [("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362),
                    ("RTX 4090", 165), ("L4", 121)]

# kind -> how the table names it (label adds the MSD kinds' queue), in the tables' order
METHODS = {"clip": "CLIP, batch k·b", "clip-naive": "CLIP naive accumulation k×b",
           "clip-exact": "CLIP exact k×b (feature cache)", "msd": "MSD k×b", "msd-queue": "MSD k×b"}
MOMENTUM, ALPHA = 0.98, 0.4   # train.py's defaults (tests/test_bench.py pins them)
VOCAB_SIZE = 2048             # train.py's default tokenizer size, whatever the preset


# -----------------------------------------------------------------------------
# Pure helpers: numbers in, numbers or text out (tests/test_bench.py pins them).

def summarise(step_seconds, samples_per_step):
    """Median time of one optimizer step -> per-sample figures. The median, not the mean: one step
    slowed down by another process on the machine should not move the result."""
    med, n = statistics.median(step_seconds), samples_per_step
    return {"s_per_step": med, "ms_per_sample": 1000 * med / n, "samples_per_s": n / med,
            # half the range of the repeats, per sample: how much to trust the median
            "spread_ms_per_sample": 1000 * (max(step_seconds) - min(step_seconds)) / 2 / n}


def negatives_per_row(kind, b, k, queue_size):
    """How many other texts (or images) each row is contrasted with."""
    if kind == "clip-naive":
        return b - 1
    return k * b - 1 + (queue_size if kind.startswith("msd") else 0)


def make_plan(ks, queue_size, queue_size_extra):
    """(kind, k, queue) of every configuration, in the order they run."""
    plan = ([("clip", k, 0) for k in ks] + [("clip-naive", k, 0) for k in ks if k > 1] +
            [("clip-exact", k, 0) for k in ks] + [("msd", k, queue_size) for k in ks])
    return plan + [("msd-queue", k, queue_size_extra) for k in ks if queue_size_extra]


def ratio(a, b):
    return a / b if a is not None and b else None


def find(rows, kind, k):
    """The measured row of (kind, k), or None when it was not measured or did not fit."""
    return next((r for r in rows if (r["kind"], r["k"], r["status"]) == (kind, k, "ok")), None)


# name -> (its column in the ratio table, numerator, denominator), each (kind, field, k), "k" the k
# of the table's row: every ratio against a baseline from the same run.
T, M = "ms_per_sample", "peak_mb"
RATIOS = {
    "msd_time_vs_clip_b": ("MSD (queue {Q}) time / CLIP b time", ("msd", T, "k"), ("clip", T, 1)),
    "msd_queue_time_vs_clip_b": ("MSD (queue {Qx}) time / CLIP b time", ("msd-queue", T, "k"), ("clip", T, 1)),
    "msd_mem_vs_k1": ("MSD (queue {Q}) memory / at k=1", ("msd", M, "k"), ("msd", M, 1)),
    "clip_kb_mem_vs_msd": ("CLIP k·b memory / MSD (queue {Q}) k×b memory", ("clip", M, "k"), ("msd", M, "k")),
    "exact_time_vs_clip_b": ("exact time / CLIP b time", ("clip-exact", T, "k"), ("clip", T, 1)),
    "exact_mem_vs_clip_kb": ("exact memory / CLIP k·b memory", ("clip-exact", M, "k"), ("clip", M, "k")),
}


def compute_ratios(rows, ks):
    """{name: {str(k): ratio}} for each of RATIOS and each k; None where a row is missing."""
    def value(kind, field, at, k):
        row = find(rows, kind, k if at == "k" else at)
        return row and row[field]
    return {name: {str(k): ratio(value(*num, k), value(*den, k)) for k in ks}
            for name, (_, num, den) in RATIOS.items()}


def peak_tflops_for(device_name, precision, override=None):
    """The card's peak for MFU: --peak-tflops if given, else the bf16 table for a CUDA card
    running bf16 / fp16 autocast. fp32 runs have a different peak: None unless given."""
    if override:
        return override
    if precision not in ("bf16", "fp16") or not device_name:
        return None
    return next((tflops for key, tflops in PEAK_TFLOPS_BF16 if key.lower() in device_name.lower()), None)


def flop_figures(kind, forward_flops_per_sample, samples_per_s, peak_tflops, k=1):
    """Training FLOPs per sample ≈ 3 forwards for the student (forward + backward, whose two
    matrix products per layer cost twice the forward) plus 1 teacher forward in MSD, or 1
    no-gradient student forward in exact CLIP accumulation (k > 1; at k = 1 it is plain CLIP);
    achieved TFLOP/s and MFU = achieved / peak (None without a peak)."""
    if not forward_flops_per_sample:
        return None, None
    extra_forward = kind.startswith("msd") or (kind == "clip-exact" and k > 1)
    achieved = forward_flops_per_sample * (4 if extra_forward else 3) * samples_per_s / 1e12
    return achieved, (achieved / peak_tflops if peak_tflops else None)


def label(kind, k, queue=0):
    if kind.startswith("msd"):
        return f"{METHODS[kind]}, queue {queue}"
    return "CLIP, batch b" if kind == "clip" and k == 1 else METHODS[kind]


def fmt(x, digits=2, none="–"):
    return none if x is None else f"{x:.{digits}f}"


def format_table(rows, ratios, ks, b, queue_size=0, queue_size_extra=2048, memory_note=""):
    """Two markdown tables: every configuration (in make_plan's order), then the ratios per k."""
    lines = ["| method | k × b | negatives per row | ms / sample | samples / s | peak MB "
             "| time vs CLIP b | TFLOP/s | MFU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    clip_b = find(rows, "clip", 1)
    for kind in METHODS:
        for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["k"]):
            k, queue = r["k"], r.get("queue", 0)
            cells = [label(kind, k, queue), f"1 × {k * b}" if kind == "clip" else f"{k} × {b}",
                     str(negatives_per_row(kind, b, k, queue))]
            if r["status"] != "ok":
                cells += [r["status"]] + [""] * 5
            else:
                cells += [f"{r['ms_per_sample']:.4g}", f"{r['samples_per_s']:.0f}", fmt(r["peak_mb"], 0),
                          fmt(ratio(r["ms_per_sample"], clip_b and clip_b["ms_per_sample"])),
                          fmt(r.get("achieved_tflops"), 3),
                          "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"]
            lines.append("| " + " | ".join(cells) + " |")
    headers = [column.format(Q=queue_size, Qx=queue_size_extra) for column, _, _ in RATIOS.values()]
    lines += ["", "| k | window N = k·b | " + " | ".join(headers) + " |", "|---:" * (2 + len(headers)) + "|"]
    lines += [f"| {k} | {k * b} | " + " | ".join(fmt(ratios[name].get(str(k))) for name in RATIOS) + " |"
              for k in ks]
    return "\n".join(lines + (["", memory_note] if memory_note else []))


# -----------------------------------------------------------------------------
# One configuration in this process (--one): what the parent runs in a fresh child.

def reset_peak_rss():
    """Restart the high-water mark from the current resident size (Linux >= 4.0: writing 5 to
    /proc/self/clear_refs) and return it in MB; elsewhere the peak so far (None where unknown)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return runtime.peak_rss_mb()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _setup(cfg):
    """The device, the autocast context, the GradScaler (fp16) or None, the precision name and the
    model config: device and precision by plumbing/runtime.py's rules, the same as train.py's."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = runtime.pick_device(cfg["device"])
    autocast, scaler, precision = runtime.pick_precision(cfg["precision"], device)
    model_cfg = make_config(cfg["preset"], image_size=cfg["image_size"],
                            in_channels=cfg["channels"], vocab_size=VOCAB_SIZE)
    return device, autocast, scaler, precision, model_cfg


def count_forward_flops(model_cfg):
    """FLOPs of one student forward per sample, counted by torch's FlopCounterMode on the meta
    device (shapes only: no memory, no time), with a full-length token sequence."""
    n = 2
    with torch.device("meta"):
        model = DualEncoder(model_cfg)
        images = torch.zeros(n, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
        tokens = torch.ones(n, model_cfg.context_length, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images, tokens)
    return counter.get_total_flops() / n


def probe(cfg):
    """The machine, the resolved device and precision, and the model's forward FLOPs."""
    device, _, _, precision, model_cfg = _setup(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "device_name": name, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "precision": precision, "image_size": model_cfg.image_size,
            "context_length": model_cfg.context_length, "forward_flops_per_sample": count_forward_flops(model_cfg)}


def random_batch(n, model_cfg, device, generator):
    """Random images (n, C, H, W) in [0, 1), token rows padded to the context length (each a random
    length between a quarter and all of it), and distinct report ids."""
    L = model_cfg.context_length
    images = torch.rand(n, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size,
                        generator=generator)
    tokens = torch.randint(PAD_ID + 1, model_cfg.vocab_size, (n, L), generator=generator)
    lengths = torch.randint(max(1, L // 4), L + 1, (n, 1), generator=generator)
    tokens[torch.arange(L)[None, :] >= lengths] = PAD_ID                   # (n, L)
    ids = torch.randperm(2**20, generator=generator)[:n]                   # (n,), no duplicates
    return images.to(device), tokens.to(device), ids.to(device)


def measure_step(cfg):
    """Warm-up steps, then `repeats` timed optimizer steps of one configuration, and the peak
    memory: {"times": [s, ...], "peak_mb", "base_mb", ...} or {"oom": True}."""
    device, autocast, scaler, precision, model_cfg = _setup(cfg)
    cuda = device.type == "cuda"
    kind, b, k, K = cfg["kind"], cfg["batch_size"], cfg["k"], cfg["queue_size"]
    gen = torch.Generator().manual_seed(0)
    if cuda:
        base_mb = 0.0
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # On the CPU the first training step pages in ~200 MB of library code and thread pools
        # (oneDNN, OpenMP), whatever the batch: the same for every configuration, so take it on
        # a throwaway model of two micro-batches of 2, then restart the high-water mark. What
        # is left is the method's own memory: weights, optimizer state, activations, inputs.
        throwaway = DualEncoder(model_cfg)
        opt = torch.optim.SGD(throwaway.parameters(), lr=0.0)
        mbs = [random_batch(2, model_cfg, device, gen) for _ in range(2)]
        msd_step(throwaway, make_teacher(throwaway), FeatureQueue(4, model_cfg.embed_dim), opt,
                 mbs, alpha=ALPHA, momentum=MOMENTUM, autocast=autocast)
        clip_step(throwaway, opt, mbs, autocast=autocast)     # the feature cache (and plain CLIP's kernels)
        del throwaway, opt, mbs
        base_mb = reset_peak_rss()
    torch.manual_seed(0)
    try:
        student = DualEncoder(model_cfg).to(device)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                                      weight_decay=0.05, fused=cuda)
        model = torch.compile(student) if cfg["compile"] else student
        n_batches, n = (1, k * b) if kind == "clip" else (k, b)   # one batch of k·b, or k of b
        micro_batches = [random_batch(n, model_cfg, device, gen) for _ in range(n_batches)]
        common = dict(autocast=autocast, scaler=scaler, max_grad_norm=1.0)
        if kind == "msd":
            teacher = make_teacher(student)
            queue = FeatureQueue(K, model_cfg.embed_dim).to(device)
            if K:   # a full queue from the first step: the steady state of training
                feats = torch.randn(2, K, model_cfg.embed_dim, generator=gen).to(device)
                feats = torch.nn.functional.normalize(feats, dim=-1)
                queue.enqueue(feats[0], feats[1], torch.arange(2**20, 2**20 + K, device=device))
            step = lambda: msd_step(model, teacher, queue, optimizer, micro_batches, alpha=ALPHA,  # noqa: E731
                                    momentum=MOMENTUM, duplicate_aware=True, **common)
        else:   # CLIP on one batch, naive accumulation, or exact accumulation with the cache
            step_fn = clip_step if kind == "clip-exact" else clip_naive_step
            step = lambda: step_fn(model, optimizer, micro_batches, **common)  # noqa: E731

        def timed():
            t = time.perf_counter()
            step().item()       # .item() waits for all the step queued on the device, EMA included
            return time.perf_counter() - t

        warmup = [timed() for _ in range(cfg["warmup"])]   # first steps: allocation, compilation
        times = [timed() for _ in range(cfg["repeats"])]
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    process_peak_mb = runtime.peak_memory_mb(device)
    # base_mb is 0 on CUDA; None where the platform tells no resident size (runtime.peak_rss_mb)
    peak_mb = None if None in (process_peak_mb, base_mb) else process_peak_mb - base_mb
    return {"oom": False, "times": times, "warmup_times": warmup, "peak_mb": peak_mb,
            "base_mb": base_mb, "process_peak_mb": process_peak_mb, "precision": precision,
            "threads": torch.get_num_threads(), "device": str(device)}


# -----------------------------------------------------------------------------
# The parent: one child per configuration, then the tables.

def run_child(cfg, timeout):
    """Run `python bench.py --one CFG` and return the JSON line it prints, or {"error": ...}."""
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--one", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"bench_one": true'):
            return json.loads(line)
    return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--preset", default="tiny", help="model size (model.py PRESETS)")
    a("--image-size", type=int, default=None, help="image side in pixels (default: the preset's)")
    a("--channels", type=int, default=1, choices=[1, 3])
    a("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:1, mps")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
      help="auto: as train.py, bf16 autocast on a card with bf16 tensor cores, fp16 + loss "
           "scaler on older CUDA cards, else fp32")
    a("--compile", action="store_true", help="torch.compile the student (each child compiles once)")
    a("--batch-size", type=int, default=32, help="micro-batch b")
    a("--ks", default="1,2,4,8,16", help="numbers of micro-batches k, comma-separated")
    a("--queue-size", type=int, default=0, help="queue K of the msd rows (train.py's default: none)")
    a("--queue-size-extra", type=int, default=2048, help="queue K of the msd-queue rows (0: none)")
    a("--repeats", type=int, default=5, help="timed optimizer steps per configuration (median)")
    a("--warmup", type=int, default=2, help="untimed steps first (allocation, compilation)")
    a("--threads", type=int, default=None, help="torch threads in each child (default: torch's)")
    a("--max-clip-batch", type=int, default=512,
      help="CPU only: skip plain CLIP at batches above this (on CUDA CLIP runs until it OOMs)")
    a("--peak-tflops", type=float, default=None,
      help="the device's peak TFLOP/s for MFU (default: a table of bf16 peaks by CUDA card name)")
    a("--timeout", type=int, default=1800, help="seconds allowed for each child process")
    a("--json", default="results/bench.json", help="where to write all numbers ('' = nowhere)")
    a("--one", default=None, metavar="CONFIG_JSON", help="internal: measure one configuration (these "
      "options, overridden by its keys: kind, k, queue_size...) and print one JSON line")
    args = p.parse_args(argv)
    if args.one is None:
        try:
            args.ks = sorted({int(k) for k in args.ks.split(",")})
        except ValueError:
            p.error(f"--ks must be comma-separated integers, got {args.ks!r}")
        if min(args.ks[0], args.batch_size, args.repeats) < 1 or \
                min(args.queue_size, args.queue_size_extra) < 0:
            p.error("--ks, --batch-size and --repeats must be positive, the queue sizes >= 0")
        if args.queue_size_extra and args.queue_size_extra == args.queue_size:
            p.error(f"--queue-size-extra {args.queue_size} repeats --queue-size: give another, or 0")
    return p, args


def main(argv=None):
    parser, args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k != "one"}
    if args.one is not None:   # a child: one configuration, one JSON line
        cfg = {**settings, "kind": "msd", "k": 1, **json.loads(args.one)}
        if cfg["kind"] not in ("probe", "clip", "clip-naive", "clip-exact", "msd"):
            parser.error(f"--one: unknown kind {cfg['kind']!r}; choose probe, clip, clip-naive, "
                         "clip-exact or msd")
        out = probe(cfg) if cfg["kind"] == "probe" else measure_step(cfg)
        print(json.dumps({"bench_one": True, **out, "config": cfg}), flush=True)
        return 0
    b, ks, Q, Qx = args.batch_size, args.ks, args.queue_size, args.queue_size_extra
    try:
        runtime.pick_device(args.device)     # one line now, where a device named outright is missing
    except ValueError as e:
        parser.error(str(e))
    machine = run_child({**settings, "kind": "probe"}, args.timeout)
    if "error" in machine:
        parser.error(f"could not start a measurement: {machine['error']}")
    cuda, fwd = machine["device"].startswith("cuda"), machine["forward_flops_per_sample"]
    peak = peak_tflops_for(machine["device_name"] if cuda else None, machine["precision"], args.peak_tflops)
    print(f"{machine['device_name']} ({machine['device']}, {machine['precision']}, "
          f"{machine['threads']} threads, {machine['cpu_count']} CPUs), torch {machine['torch']} | "
          f"{args.preset} preset at {machine['image_size']} px: {fwd / 1e9:.3f} GFLOP per sample "
          f"forward | b = {b}, k = {ks}, MSD queue {Q}" + (f" and {Qx}" if Qx else "") +
          f" | median of {args.repeats} steps after {args.warmup} warm-up", flush=True)

    plan, rows, clip_oom = make_plan(ks, Q, Qx), [], False
    for i, (kind, k, queue) in enumerate(plan):
        row, t = {"kind": kind, "k": k, "b": b, "queue": queue}, time.time()
        if kind == "clip" and not cuda and k * b > args.max_clip_batch:
            row["status"] = f"skipped (> --max-clip-batch {args.max_clip_batch})"
        elif kind == "clip" and clip_oom:
            row["status"] = "OOM"                # a smaller batch already ran out of memory
        else:
            child = {**settings, "kind": "msd" if kind == "msd-queue" else kind, "k": k, "queue_size": queue}
            res = run_child(child, args.timeout)
            if res.get("oom"):
                row["status"], clip_oom = "OOM", clip_oom or kind == "clip"
            elif "error" in res:
                row.update(status="error", error=res["error"])
            else:
                row.update(status="ok", **summarise(res["times"], k * b), **{key: res[key] for key in (
                    "times", "warmup_times", "peak_mb", "base_mb", "process_peak_mb")})
                row["achieved_tflops"], row["mfu"] = flop_figures(kind, fwd, row["samples_per_s"], peak, k)
        what = (f"{row['ms_per_sample']:.4g} ms/sample, {fmt(row['peak_mb'], 0)} MB" if row["status"] == "ok"
                else row["status"] + (f": {row['error']}" if "error" in row else ""))
        print(f"[{i + 1}/{len(plan)}] {label(kind, k, queue)}, k = {k}, b = {b}: {what} "
              f"({time.time() - t:.0f} s)", flush=True)
        rows.append(row)
    ratios = compute_ratios(rows, ks)

    bases = [r["base_mb"] for r in rows if r["status"] == "ok" and r["base_mb"] is not None]
    note = ("Peak memory: torch.cuda.max_memory_allocated (weights, optimizer state, activations, "
            "inputs; not the CUDA context)." if cuda else
            "Peak memory off CUDA: the process's high-water resident size minus its size after a "
            f"throwaway warm-up step (Python, torch, its kernels: about {statistics.median(bases):.0f} MB "
            "in each process), so the ratios compare what training needs; the allocator keeps some "
            "freed pages, so it grows a little with k before it levels off." if bases else "")
    if peak is None:
        note += " MFU n/a: no peak FLOP/s known for this device and precision (pass --peak-tflops)."
    table = format_table(rows, ratios, ks, b, Q, Qx, note.strip())
    print("\n" + table)

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "settings": settings, "command": sys.argv, "peak_tflops": peak,
                       "rows": rows, "ratios": ratios, "table": table}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
