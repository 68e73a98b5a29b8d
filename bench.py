"""What momentum self-distillation and exact CLIP accumulation cost: time and memory against plain CLIP.

    python bench.py                                        # CPU: tiny preset, b = 32, k = 1..16
    python bench.py --device cuda --preset small --batch-size 64 --compile   # a GPU (bf16 autocast)

For a micro-batch of b pairs and each k in --ks, five ways to take one optimizer step (the
--one kind, then the accumulate.py step; train.py's --method in brackets):

    clip        CLIP, batch b       clip_step on one batch of b        (b - 1 negatives per row)
    clip        CLIP, batch k*b     clip_step on one batch of k*b      (k*b - 1; k times the memory)
    clip-naive  naive accumulation  clip_naive_step on k x b           (still b - 1)   [clip-naive]
    clip-exact  exact accumulation  clip_step on k x b, feature cache  (k*b - 1)       [clip]
    msd         MSD                 msd_step on k x b                  (k*b + K - 1)   [msd]

Each configuration runs in a fresh process (this file re-invoked with --one CONFIG_JSON), because
on the CPU the only honest peak memory is the process's high-water resident size, which never
goes down; on CUDA it is torch.cuda.max_memory_allocated. Inputs are random images and tokens of
the right shapes: the model's cost does not depend on what the pictures show.

The ratios the method promises (METHOD.md), each against a baseline from the same run:
  - MSD time per sample / CLIP time per sample at the same b: about 4/3 (one extra teacher forward
    for a student forward + backward that costs about 3 forwards);
  - MSD peak memory at k = 16 / at k = 1: about 1 (only N x D teacher features grow with k);
  - CLIP peak memory at batch k*b / MSD peak memory at k micro-batches of b: grows with k.
And those of exact CLIP accumulation (GradCache's feature cache), against the same baselines:
  - its time per sample / CLIP's at batch b: about 4/3 for k > 1 (one extra student forward
    without gradient); 1 at k = 1, where clip_step is plain CLIP;
  - its peak memory / CLIP's at batch k*b: falls with k (one micro-batch of activations).
Then the input pipeline (rendering, augmentation) against what the model consumes, and on CUDA
the model FLOP utilisation (MFU, as nanoGPT logs it): achieved FLOP/s over the card's peak.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity), matched in this order
# against torch.cuda.get_device_name(). Anything else: pass --peak-tflops, or MFU prints n/a.
PEAK_TFLOPS_BF16 = [
    ("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362),
    ("RTX 4090", 165), ("L4", 121),
]

METHODS = {  # kind -> how the table names it
    "clip": "CLIP, batch k·b",
    "clip-naive": "CLIP naive accumulation k×b",
    "clip-exact": "CLIP exact k×b (feature cache)",
    "msd": "MSD k×b",
}

# What --one fills in for keys its CONFIG_JSON leaves out.
ONE_DEFAULTS = dict(kind="msd", b=32, k=1, preset="tiny", image_size=None, channels=1,
                    vocab_size=2048,  # train.py's default tokenizer size, whatever the preset
                    queue_size=2048, device="auto", precision="auto",
                    compile=False, repeats=5, warmup=2, threads=None, seed=0, data_n=512)


# -----------------------------------------------------------------------------
# Pure helpers: numbers in, numbers or text out (tests/test_bench.py pins them).

def summarise(step_seconds, samples_per_step):
    """Median time of one optimizer step -> per-sample figures. The median, not the mean: one step
    slowed down by another process on the machine should not move the result."""
    med = statistics.median(step_seconds)
    return {"s_per_step": med,
            "ms_per_sample": 1000 * med / samples_per_step,
            "samples_per_s": samples_per_step / med,
            # half the range of the repeats, per sample: how much to trust the median
            "spread_ms_per_sample": 1000 * (max(step_seconds) - min(step_seconds)) / 2 / samples_per_step}


def negatives_per_row(kind, b, k, queue_size):
    """How many other texts (or images) each row is contrasted with."""
    if kind == "clip":
        return k * b - 1
    if kind == "clip-naive":
        return b - 1
    if kind == "clip-exact":
        return k * b - 1
    return k * b + queue_size - 1


def ratio(a, b):
    return a / b if a is not None and b else None


def find(rows, kind, k):
    """The measured row of (kind, k), or None when it was not measured or did not fit."""
    for r in rows:
        if r["kind"] == kind and r["k"] == k and r["status"] == "ok":
            return r
    return None


def compute_ratios(rows, ks):
    """The ratios, per k, each against a baseline from the same run.

    msd_time_vs_clip_b:    MSD ms/sample at k  /  CLIP ms/sample at batch b (k = 1)
    msd_mem_vs_k1:         MSD peak memory at k  /  MSD peak memory at k = 1
    clip_kb_mem_vs_msd:    CLIP peak memory at batch k·b  /  MSD peak memory at k micro-batches of b
    exact_time_vs_clip_b:  exact CLIP accumulation ms/sample at k  /  CLIP ms/sample at batch b
    exact_mem_vs_clip_kb:  exact CLIP accumulation peak memory at k  /  CLIP peak memory at batch k·b
    Missing measurements give None."""
    clip_b, msd_1 = find(rows, "clip", 1), find(rows, "msd", 1)
    out = {"msd_time_vs_clip_b": {}, "msd_mem_vs_k1": {}, "clip_kb_mem_vs_msd": {},
           "exact_time_vs_clip_b": {}, "exact_mem_vs_clip_kb": {}}
    for k in ks:
        msd, clip_kb, exact = find(rows, "msd", k), find(rows, "clip", k), find(rows, "clip-exact", k)
        out["msd_time_vs_clip_b"][str(k)] = ratio(msd and msd["ms_per_sample"],
                                                  clip_b and clip_b["ms_per_sample"])
        out["msd_mem_vs_k1"][str(k)] = ratio(msd and msd["peak_mb"], msd_1 and msd_1["peak_mb"])
        out["clip_kb_mem_vs_msd"][str(k)] = ratio(clip_kb and clip_kb["peak_mb"], msd and msd["peak_mb"])
        out["exact_time_vs_clip_b"][str(k)] = ratio(exact and exact["ms_per_sample"],
                                                    clip_b and clip_b["ms_per_sample"])
        out["exact_mem_vs_clip_kb"][str(k)] = ratio(exact and exact["peak_mb"],
                                                    clip_kb and clip_kb["peak_mb"])
    return out


def peak_tflops_for(device_name, precision, override=None):
    """The card's peak for MFU: --peak-tflops if given, else the bf16 table for a CUDA card
    running bf16 / fp16 autocast. fp32 runs have a different peak: None unless given."""
    if override:
        return override
    if precision not in ("bf16", "fp16") or not device_name:
        return None
    for key, tflops in PEAK_TFLOPS_BF16:
        if key.lower() in device_name.lower():
            return tflops
    return None


def flop_figures(kind, forward_flops_per_sample, samples_per_s, peak_tflops, k=1):
    """Training FLOPs per sample ≈ 3 forwards for the student (forward + backward, whose two
    matrix products per layer cost twice the forward) plus 1 teacher forward in MSD, or 1
    no-gradient student forward in exact CLIP accumulation (k > 1; at k = 1 it is plain CLIP);
    achieved TFLOP/s and MFU = achieved / peak (None without a peak)."""
    if not forward_flops_per_sample:
        return None, None
    extra_forward = kind == "msd" or (kind == "clip-exact" and k > 1)
    per_sample = forward_flops_per_sample * (4 if extra_forward else 3)
    achieved = per_sample * samples_per_s / 1e12
    return achieved, (achieved / peak_tflops if peak_tflops else None)


def label(kind, k):
    return "CLIP, batch b" if kind == "clip" and k == 1 else METHODS[kind]


def fmt(x, digits=2, none="–"):
    return none if x is None else f"{x:.{digits}f}"


def format_table(rows, ratios, ks, b, queue_size, memory_note=""):
    """Two markdown tables: every configuration, then the ratios per k."""
    lines = [
        "| method | k × b | negatives per row | ms / sample | samples / s | peak MB "
        "| time vs CLIP b | TFLOP/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    clip_b = find(rows, "clip", 1)
    for kind in ("clip", "clip-naive", "clip-exact", "msd"):
        for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["k"]):
            name = label(kind, r["k"])
            shape = f"1 × {r['k'] * b}" if kind == "clip" else f"{r['k']} × {b}"
            negatives = negatives_per_row(kind, b, r["k"], queue_size)
            if r["status"] != "ok":
                lines.append(f"| {name} | {shape} | {negatives} | {r['status']} | | | | | |")
                continue
            vs = ratio(r["ms_per_sample"], clip_b and clip_b["ms_per_sample"])
            mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"| {name} | {shape} | {negatives} | {r['ms_per_sample']:.4g} "
                         f"| {r['samples_per_s']:.0f} | {r['peak_mb']:.0f} | {fmt(vs)} "
                         f"| {fmt(r.get('achieved_tflops'), 3)} | {mfu} |")
    lines += ["", "| k | window N = k·b | MSD time / CLIP b time | MSD memory / MSD at k=1 "
              "| CLIP k·b memory / MSD k×b memory | exact time / CLIP b time "
              "| exact memory / CLIP k·b memory |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ks:
        key = str(k)
        lines.append(f"| {k} | {k * b} | {fmt(ratios['msd_time_vs_clip_b'].get(key))} "
                     f"| {fmt(ratios['msd_mem_vs_k1'].get(key))} "
                     f"| {fmt(ratios['clip_kb_mem_vs_msd'].get(key))} "
                     f"| {fmt(ratios['exact_time_vs_clip_b'].get(key))} "
                     f"| {fmt(ratios['exact_mem_vs_clip_kb'].get(key))} |")
    if memory_note:
        lines += ["", memory_note]
    return "\n".join(lines)


def input_verdict(data, consume_samples_per_s):
    """Can the input pipeline feed the model? train.py renders the synthetic set once (then caches
    it) and augments each window in the training loop, serially, so augmentation time adds to every
    step: report its rate against the model's and the share of a step it would take."""
    aug = data["augment_samples_per_s"]
    share = (1 / aug) / (1 / aug + 1 / consume_samples_per_s)
    keeps_up = aug >= consume_samples_per_s
    return (f"input pipeline: rendering {data['render_1_worker']:.0f} images/s with 1 worker, "
            f"{data['render_all_workers']:.0f} images/s with {data['workers']} (once, before "
            f"training; cached after); augmentation + batching on {data.get('device', 'cpu')} {aug:.0f} "
            f"samples/s against the "
            f"model's {consume_samples_per_s:.0f} samples/s (MSD, largest k): "
            + ("keeps up" if keeps_up else "DOES NOT keep up: the model waits for its input")
            + f"; done serially in train.py's loop it takes {100 * share:.0f}% of each step.")


# -----------------------------------------------------------------------------
# One configuration in this process (--one): what the parent runs in a fresh child.

def _proc_status_mb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb():
    """This process's peak resident size. On Linux VmHWM, the high-water mark of this process's own
    address space: ru_maxrss would also count the parent's size, since Linux carries it across
    fork + exec (a child of a 400 MB parent reports at least 400 MB)."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def reset_peak_rss():
    """Restart the high-water mark from the current resident size (Linux >= 4.0: writing 5 to
    /proc/self/clear_refs). Returns the new baseline in MB, or the peak so far where that fails."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_mb("VmRSS")
    except OSError:
        return peak_rss_mb()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _setup(cfg):
    """torch, the device, the autocast factory, the precision name and the model config."""
    import contextlib
    import functools

    import torch

    from model import make_config

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    if cfg["device"] == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg["device"])
    precision = cfg["precision"]
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = functools.partial(torch.autocast, device_type=device.type, dtype=dtype)
    model_cfg = make_config(cfg["preset"], image_size=cfg["image_size"],
                            in_channels=cfg["channels"], vocab_size=cfg["vocab_size"])
    return torch, device, autocast, precision, model_cfg


def count_forward_flops(model_cfg):
    """FLOPs of one student forward per sample, counted by torch's FlopCounterMode on the meta
    device (shapes only: no memory, no time), with a full-length token sequence."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model import DualEncoder

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
    torch, device, _, precision, model_cfg = _setup(cfg)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device), "device_name": name,
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "precision": precision, "image_size": model_cfg.image_size,
            "context_length": model_cfg.context_length,
            "forward_flops_per_sample": count_forward_flops(model_cfg)}


def random_batch(torch, n, model_cfg, device, generator):
    """Random images (n, C, H, W) in [0, 1), token rows padded to the context length (each a random
    length between a quarter and all of it), and distinct report ids."""
    from model import PAD_ID

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
    torch, device, autocast, precision, model_cfg = _setup(cfg)
    from accumulate import clip_naive_step, clip_step, msd_step
    from loss import FeatureQueue
    from model import DualEncoder
    from momentum import make_teacher

    cuda = device.type == "cuda"
    kind, b, k = cfg["kind"], cfg["b"], cfg["k"]
    gen = torch.Generator().manual_seed(cfg["seed"])
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
        mbs = [random_batch(torch, 2, model_cfg, device, gen) for _ in range(2)]
        msd_step(throwaway, make_teacher(throwaway), FeatureQueue(4, model_cfg.embed_dim), opt,
                 mbs, alpha=0.4, momentum=0.995, autocast=autocast)
        clip_step(throwaway, opt, mbs, autocast=autocast)           # the feature cache
        clip_naive_step(throwaway, opt, mbs, autocast=autocast)
        del throwaway, opt, mbs
        base_mb = reset_peak_rss()
    torch.manual_seed(cfg["seed"])
    try:
        student = DualEncoder(model_cfg).to(device)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                                      weight_decay=0.05, fused=cuda)
        model = torch.compile(student) if cfg["compile"] else student
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        if kind == "clip":   # one batch of k·b
            micro_batches = [random_batch(torch, k * b, model_cfg, device, gen)]
        else:                # k micro-batches of b
            micro_batches = [random_batch(torch, b, model_cfg, device, gen) for _ in range(k)]
        if kind == "msd":
            teacher = make_teacher(student)
            queue = FeatureQueue(cfg["queue_size"], model_cfg.embed_dim).to(device)
            if cfg["queue_size"]:   # a full queue from the first step: the steady state of training
                K, D = cfg["queue_size"], model_cfg.embed_dim
                feats = torch.nn.functional.normalize(torch.randn(2, K, D, generator=gen), dim=-1)
                queue.enqueue(feats[0].to(device), feats[1].to(device),
                              torch.arange(2**20, 2**20 + K, device=device))
            step = lambda: msd_step(model, teacher, queue, optimizer, micro_batches, alpha=0.4,  # noqa: E731
                                    momentum=0.995, duplicate_aware=True, autocast=autocast,
                                    scaler=scaler, max_grad_norm=1.0)
        else:   # CLIP on one batch, naive accumulation, or exact accumulation with the cache
            step_fn = clip_step if kind == "clip-exact" else clip_naive_step
            step = lambda: step_fn(model, optimizer, micro_batches, autocast=autocast,  # noqa: E731
                                   scaler=scaler, max_grad_norm=1.0)

        def timed():
            if cuda:
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            step().item()                  # .item() waits for the device
            if cuda:
                torch.cuda.synchronize(device)
            return time.perf_counter() - t

        warmup = [timed() for _ in range(cfg["warmup"])]   # first steps: allocation, compilation
        times = [timed() for _ in range(cfg["repeats"])]
    except torch.cuda.OutOfMemoryError:
        return {"oom": True}
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        process_peak_mb = peak_mb
    else:
        process_peak_mb = peak_rss_mb()
        peak_mb = process_peak_mb - base_mb
    return {"oom": False, "times": times, "warmup_times": warmup, "peak_mb": peak_mb,
            "base_mb": base_mb, "process_peak_mb": process_peak_mb, "precision": precision,
            "threads": torch.get_num_threads(), "device": str(device)}


def measure_data(cfg):
    """Rendering throughput (1 worker, all cores) and the per-sample cost of what train.py does to
    every window: index the uint8 images, move them to the device, convert to float, augment
    (data.train_augment, on the device)."""
    torch, device, _, _, model_cfg = _setup(cfg)
    import data
    import synthetic

    n, size, b = cfg["data_n"], model_cfg.image_size, cfg["b"]
    workers = os.cpu_count() or 1
    t = time.perf_counter()
    train = synthetic.render_synthetic("train", n, size, workers=1)
    render_1 = n / (time.perf_counter() - t)
    if workers > 1:   # synthetic.py uses a process pool only from 256 items on
        t = time.perf_counter()
        synthetic.render_synthetic("train", max(n, 256), size, workers=workers)
        render_all = max(n, 256) / (time.perf_counter() - t)
    else:
        render_all = render_1
    images = train["images"]
    if model_cfg.in_channels == 3:
        images = images.expand(-1, 3, -1, -1)
    tokens = torch.randint(1, 100, (n, model_cfg.context_length))
    gen = torch.Generator().manual_seed(cfg["seed"])

    def window():
        t = time.perf_counter()
        idx = torch.randint(0, n, (b,), generator=gen)
        data.train_augment(images[idx].to(device).float() / 255)   # (b, C, H, W), as train.py
        tokens[idx].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    for _ in range(cfg["warmup"] + 1):                          # untimed: allocation
        window()
    times = [window() for _ in range(cfg["repeats"])]
    return {"render_1_worker": render_1, "render_all_workers": render_all, "workers": workers,
            "augment_samples_per_s": b / statistics.median(times), "augment_times": times,
            "image_size": size, "batch": b, "threads": torch.get_num_threads(),
            "device": str(device)}


def run_one(cfg):
    cfg = {**ONE_DEFAULTS, **cfg}
    if cfg["kind"] == "probe":
        out = probe(cfg)
    elif cfg["kind"] == "data":
        out = measure_data(cfg)
    elif cfg["kind"] in METHODS:
        out = measure_step(cfg)
    else:
        raise SystemExit(f"--one: unknown kind {cfg['kind']!r}; choose probe, data, {', '.join(METHODS)}")
    out.update(bench_one=True, config=cfg)
    print(json.dumps(out), flush=True)


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
        if line.startswith("{"):
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                continue
            if out.get("bench_one"):
                return out
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {last}"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--preset", default="tiny", help="model size (model.py PRESETS)")
    a("--image-size", type=int, default=None, help="image side in pixels (default: the preset's)")
    a("--channels", type=int, default=1, choices=[1, 3])
    a("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
      help="auto: bf16 autocast on CUDA, fp32 on the CPU (as train.py)")
    a("--compile", action="store_true", help="torch.compile the student (each child compiles once)")
    a("--batch-size", type=int, default=32, help="micro-batch b")
    a("--ks", default="1,2,4,8,16", help="numbers of micro-batches k, comma-separated")
    a("--queue-size", type=int, default=2048, help="MSD queue K (kept full during the benchmark)")
    a("--repeats", type=int, default=5, help="timed optimizer steps per configuration (median)")
    a("--warmup", type=int, default=2, help="untimed steps first (allocation, compilation)")
    a("--threads", type=int, default=None, help="torch threads in each child (default: torch's)")
    a("--max-clip-batch", type=int, default=512,
      help="CPU only: skip plain CLIP at batches above this (on CUDA CLIP runs until it OOMs)")
    a("--peak-tflops", type=float, default=None,
      help="the device's peak TFLOP/s for MFU (default: a table of bf16 peaks by CUDA card name)")
    a("--data-n", type=int, default=512, help="images rendered to time the synthetic generator")
    a("--no-data", action="store_true", help="skip the input-pipeline measurement")
    a("--timeout", type=int, default=1800, help="seconds allowed for each child process")
    a("--json", default="results/bench.json", help="where to write all numbers")
    a("--one", default=None, metavar="CONFIG_JSON",
      help="internal: measure one configuration in this process and print one JSON line")
    args = p.parse_args(argv)
    if args.one is None:
        try:
            args.ks = sorted({int(k) for k in args.ks.split(",")})
        except ValueError:
            p.error(f"--ks must be comma-separated integers, got {args.ks!r}")
        if args.ks[0] < 1 or args.batch_size < 1:
            p.error("--ks and --batch-size must be positive")
    return p, args


def main(argv=None):
    parser, args = parse_args(argv)
    if args.one is not None:
        sys.path.insert(0, HERE)
        run_one(json.loads(args.one))
        return 0
    common = dict(preset=args.preset, image_size=args.image_size, channels=args.channels,
                  device=args.device, precision=args.precision, compile=args.compile,
                  queue_size=args.queue_size, repeats=args.repeats, warmup=args.warmup,
                  threads=args.threads, b=args.batch_size, data_n=args.data_n)
    b, ks = args.batch_size, args.ks
    machine = run_child({**common, "kind": "probe"}, args.timeout)
    if "error" in machine:
        parser.error(f"could not start a measurement: {machine['error']}")
    cuda = machine["device"].startswith("cuda")
    peak = peak_tflops_for(machine["device_name"] if cuda else None, machine["precision"],
                           args.peak_tflops)
    fwd = machine["forward_flops_per_sample"]
    print(f"{machine['device_name']} ({machine['device']}, {machine['precision']}, "
          f"{machine['threads']} threads, {machine['cpu_count']} CPUs), torch {machine['torch']} | "
          f"{args.preset} preset at {machine['image_size']} px: {fwd / 1e9:.3f} GFLOP per sample "
          f"forward | b = {b}, k = {ks}, queue {args.queue_size} | median of {args.repeats} steps "
          f"after {args.warmup} warm-up", flush=True)

    plan = ([("clip", k) for k in ks] + [("clip-naive", k) for k in ks if k > 1] +
            [("clip-exact", k) for k in ks] + [("msd", k) for k in ks])
    rows, clip_oom = [], False
    for i, (kind, k) in enumerate(plan):
        row = {"kind": kind, "k": k, "b": b}
        if kind == "clip" and not cuda and k * b > args.max_clip_batch:
            row["status"] = f"skipped (> --max-clip-batch {args.max_clip_batch})"
        elif kind == "clip" and clip_oom:
            row["status"] = "OOM"                # a smaller batch already ran out of memory
        else:
            t = time.time()
            res = run_child({**common, "kind": kind, "k": k}, args.timeout)
            if res.get("oom"):
                row["status"], clip_oom = "OOM", clip_oom or kind == "clip"
            elif "error" in res:
                row["status"] = "error"
                row["error"] = res["error"]
            else:
                samples = k * b
                row.update(status="ok", **summarise(res["times"], samples), times=res["times"],
                           warmup_times=res["warmup_times"], peak_mb=res["peak_mb"],
                           base_mb=res["base_mb"], process_peak_mb=res["process_peak_mb"])
                row["achieved_tflops"], row["mfu"] = flop_figures(kind, fwd, row["samples_per_s"], peak, k)
        if row["status"] == "ok":
            what = f"{row['ms_per_sample']:.4g} ms/sample, {row['peak_mb']:.0f} MB ({time.time() - t:.0f} s)"
        else:
            what = row["status"] + (f": {row['error']}" if "error" in row else "")
        print(f"[{i + 1}/{len(plan)}] {label(kind, k)}, k = {k}, b = {b}: {what}", flush=True)
        rows.append(row)
    ratios = compute_ratios(rows, ks)

    if cuda:
        note = ("Peak memory: torch.cuda.max_memory_allocated (weights, optimizer state, "
                "activations, inputs; not the CUDA context).")
    else:
        bases = [r["base_mb"] for r in rows if r["status"] == "ok"]
        note = ("Peak memory on the CPU: the process's high-water resident size (VmHWM) minus its "
                "size after a throwaway warm-up step (Python, torch and its kernels, about "
                f"{statistics.median(bases):.0f} MB in each process), so the ratios compare what the "
                "training itself needs. The CPU allocator keeps some freed pages, so this grows a "
                "little with k before it levels off." if bases else "")
    if peak is None:
        note += " MFU n/a: no peak FLOP/s known for this device and precision (pass --peak-tflops)."
    table = format_table(rows, ratios, ks, b, args.queue_size, note.strip())

    data_res, verdict = None, ""
    if not args.no_data:
        data_res = run_child({**common, "kind": "data"}, args.timeout)
        msd_max = find(rows, "msd", ks[-1])
        if "error" in data_res:
            verdict = f"input pipeline: measurement failed ({data_res['error']})"
        elif msd_max:
            verdict = input_verdict(data_res, msd_max["samples_per_s"])

    kmax, kmin = str(ks[-1]), str(ks[0])
    headline = "" if ks[0] == 1 else "(no k = 1 in --ks: the ratios have no baseline) "
    headline += (
        f"MSD costs {fmt(ratios['msd_time_vs_clip_b'].get(kmin))}x the time per sample of CLIP at "
        f"the same b (k={kmin}; {fmt(ratios['msd_time_vs_clip_b'].get(kmax))}x at k={kmax}); its peak "
        f"memory at k={kmax} is {fmt(ratios['msd_mem_vs_k1'].get(kmax))}x that at k=1 while the "
        f"contrastive batch grows {ks[-1]}x; CLIP at batch {ks[-1] * b} needs "
        f"{fmt(ratios['clip_kb_mem_vs_msd'].get(kmax))}x MSD's memory at {kmax} x {b}.")
    k_cache = str(next((k for k in ks if k > 1), ks[-1]))    # the smallest k that uses the cache
    headline += (
        f"\nExact CLIP accumulation (feature cache) costs "
        f"{fmt(ratios['exact_time_vs_clip_b'].get(k_cache))}x the time per sample of CLIP at the same "
        f"b (k={k_cache}" + (f"; {fmt(ratios['exact_time_vs_clip_b'].get(kmax))}x at k={kmax}"
                             if k_cache != kmax else "") + ") and "
        f"{fmt(ratios['exact_mem_vs_clip_kb'].get(kmax))}x the memory of CLIP at batch "
        f"{ks[-1] * b}, for the same gradient.")
    print("\n" + table + "\n\n" + headline + ("\n" + verdict if verdict else ""))

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "one"}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "settings": settings, "command": sys.argv,
                       "peak_tflops": peak, "rows": rows, "ratios": ratios, "input": data_res,
                       "table": table, "headline": headline, "input_verdict": verdict}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
