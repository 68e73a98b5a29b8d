"""Which --batch-size and --accum-steps fit a consumer GPU (8, 12, 16, 24 GB) with the default method.

    python -m tools.fits                         # no CUDA here: an analytic estimate, checked on this CPU
    python -m tools.fits --device cuda --json docs/results/fits.json   # a CUDA GPU: measured

For the tiny and small presets (model.py PRESETS) at 64, 128 and 224 px, one table row each: the
largest micro-batch b (a power of two) that fits each card, and what to pass to train.py for its
default window of N = 64 pairs: --batch-size 64 --accum-steps 1 where b = 64 fits, else the
largest b and k = 64 / b (the same window, the same gradient: accumulate.py). A card's budget is
its memory (GB = 2^30 bytes) less --reserve-gb (1 GB: the CUDA context, 0.3-0.5 GB, what the
driver keeps (a 16 GB T4 shows 15 GB with ECC on) and the allocator's cache beyond what is counted).

MEASURED (--device cuda): each (preset, size, b) is one real MSD optimizer step in a fresh process,
bench.py's `--one` child (k = 64 / b, or k = 1 above b = 64; two steps, so AdamW's moments exist),
which reports torch.cuda.max_memory_allocated; an out-of-memory ends that row's sweep, never the
tool. b runs up from 8 (down to 1 where 8 does not fit) until the peak passes the largest budget.

ESTIMATED (no CUDA): memory(b) = static + b x per-sample, with the window N = max(64, b):
  static = parameters x (4 weights + 4 gradients + 8 AdamW moments + 4 EMA teacher + 2 autocast's
           16-bit weight copies, which the forward keeps for backward) bytes, plus the window's
           inputs on the device and its teacher features (2 x N x D float32);
  per sample = the activations autograd keeps for one student forward (reports at the full context
           length: the worst case, train.py trims the padding), plus 8 float32 loss rows of the
           bank (N wide: logits, log-softmaxes, targets, positives).
Per transformer block of s tokens, width h, a heads: Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", Sec. 4.1) count 34·s·h + 5·a·s² bytes in 16 bits. For
model.py's blocks: their two 1-byte dropout masks go (no dropout here: 32·s·h); the a·s² terms
(the attention scores, probabilities and their dropout) are recomputed in the backward, as in
their Sec. 5 "selective recomputation", because F.scaled_dot_product_attention's fused kernels
keep only a log-sum-exp (a·s floats): c2 = 0; and autocast runs LayerNorm in float32, so its two
inputs per block, the residual stream, stay 4 bytes: 36·s·h bytes (c1 = 36). In float32 it is
2 x 32 = 64·s·h. Plus the conv stem (per stage: GroupNorm and GELU inputs in float32, the next
convolution's input in 16 bits), the image, and per tower the final LayerNorm's input and output.
The CPU check measures what the float32 variant predicts: tiny at 64 px, b = 8, 16, 32, one
micro-batch each, bench.py's CPU peak (the resident high-water mark over a warm process; glibc is
told to map each large block on its own, so that freed tensors leave the count as they do CUDA's).
"""

import argparse
import contextlib
import datetime
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import torch

import bench
from model import DualEncoder, ModelConfig, make_config
from plumbing import runtime

WINDOW = 64                    # train.py's default window: --batch-size 32 x --accum-steps 2
CARDS_GB = (8, 12, 16, 24)
START_B = 8                    # the measured sweep starts here (b < 8 only where 8 does not fit)
MB = 2**20
CHECK_BATCHES = (8, 16, 32)
CHECK_BOUND = 0.20             # tests/test_fits.py: why 20%


# -----------------------------------------------------------------------------
# The estimate: bytes from the model's shapes.

def count_params(cfg):
    return _count_params(tuple(sorted(asdict(cfg).items())))


@functools.lru_cache(maxsize=None)
def _count_params(fields):
    with torch.device("meta"):                   # shapes only: no memory, no time
        return DualEncoder(ModelConfig(**dict(fields))).num_params()


def block_bytes(tokens, width, heads, mlp_ratio, act):
    """Bytes one pre-norm block (model.Block) keeps for backward, per sample; act = 2 (16-bit
    autocast) or 4 (float32) bytes per activation."""
    residual = 2 * 4 * tokens * width                   # ln1 and ln2 inputs, float32 either way
    matmuls = (6 + 2 * mlp_ratio) * act * tokens * width  # ln1 out, q k v, attention out, ln2 out,
    #                                                        fc1 out (GELU input), GELU out (fc2 input)
    return residual + matmuls + heads * tokens * 4      # + SDPA's log-sum-exp, no s x s matrix


def stem_bytes(cfg, act):
    """The image (the first convolution's input) and, for the conv stem, per stride-2 stage its
    GroupNorm input and GELU input (float32 under autocast too) and the next convolution's input."""
    total = cfg.in_channels * cfg.image_size ** 2 * act
    if cfg.stem == "conv":
        n = cfg.patch_size.bit_length() - 1
        for i in range(1, n + 1):
            channels, side = max(1, cfg.vision_width >> (n - i)), cfg.image_size >> i
            total += channels * side * side * (4 + 4 + act)
    return total


def estimate(cfg, fp32=False, window=WINDOW):
    """{"params", "static", "per_sample"} in bytes for one MSD step whose window is `window` pairs
    (the micro-batch b <= window); memory(b) = static + b x per_sample (estimated_mb)."""
    act = 4 if fp32 else 2
    params = count_params(cfg)
    static = params * (4 + 4 + 8 + 4 + (0 if fp32 else 2))
    L, D = cfg.context_length, cfg.embed_dim
    static += window * (cfg.in_channels * cfg.image_size ** 2 * 4 + L * 8 + 8)   # images, tokens, ids
    static += 2 * window * D * 4                                   # the teacher's window features
    s = (cfg.image_size // cfg.patch_size) ** 2 + (cfg.pool == "cls")
    vision = (cfg.vision_layers * block_bytes(s, cfg.vision_width, cfg.vision_heads, cfg.mlp_ratio, act)
              + stem_bytes(cfg, act) + 8 * s * cfg.vision_width)    # + final LayerNorm in and out
    text = (cfg.text_layers * block_bytes(L, cfg.text_width, cfg.text_heads, cfg.mlp_ratio, act)
            + 8 * L * cfg.text_width + 8 * L)                      # + final LayerNorm, token ids
    return {"params": params, "static": static, "per_sample": vision + text + 8 * 4 * window}


def accum_steps(b, window=WINDOW):
    """k for a micro-batch of b: window / b, or 1 (a window of b) above the window."""
    return max(1, window // b)


def estimated_mb(cfg, b, fp32=False, window=WINDOW):
    """Estimated peak MB of one MSD step at micro-batch b (k = accum_steps(b))."""
    e = estimate(cfg, fp32, max(window, b))
    return (e["static"] + b * e["per_sample"]) / MB


# -----------------------------------------------------------------------------
# From a memory curve (b -> peak MB, measured or estimated) to the table.

def budget_mb(card_gb, reserve_gb):
    return (card_gb - reserve_gb) * 1024


def fits(record, budget):
    return record.get("peak_mb") is not None and record["peak_mb"] <= budget


def largest_fit(records, budget, card_mb=None, device_mb=None):
    """(largest b of `records` whose peak fits `budget` MB, 0 if none; exact). records: the
    sweep's {"b", "k", "peak_mb" | "oom" | "error"}, consecutive powers of two. exact is False
    where nothing measured passed the budget: the answer is then a lower bound, as when the sweep
    stopped at --max-batch, or ran out of memory on a device smaller than this card."""
    best = 0
    for r in sorted(records, key=lambda r: r["b"]):
        if fits(r, budget):
            best = r["b"]
            continue
        oom_here = r.get("oom") and device_mb is not None and card_mb is not None and card_mb <= device_mb
        return best, bool(r.get("peak_mb") is not None or oom_here)
    return best, False


def choose(largest, window=WINDOW):
    """(--batch-size, --accum-steps) for the window, or None where even b = 1 does not fit: b = the
    window where it fits, else the largest power of two that does, k = window / b."""
    if largest < 1:
        return None
    b = min(window, 1 << (largest.bit_length() - 1))
    return b, window // b


def cell(largest, exact, window=WINDOW):
    pick = choose(largest, window)
    if pick is None:
        return "does not fit, even b = 1" if exact else "unknown (see the log)"
    return f"{'' if exact else '≥'}{largest}; --batch-size {pick[0]} --accum-steps {pick[1]}"


def summarise_row(preset, size, records, reserve_gb, device_mb=None, static_mb=None, per_sample_mb=None):
    """One row of the table and of the JSON: the curve, and per card the largest b and the pick."""
    if per_sample_mb is None:                    # measured: a line through the points at N = 64
        static_mb, per_sample_mb = fit_line([(r["b"], r["peak_mb"]) for r in records
                                             if r["b"] <= WINDOW and r.get("peak_mb") is not None])
    cards = {}
    for gb in CARDS_GB:
        largest, exact = largest_fit(records, budget_mb(gb, reserve_gb), gb * 1024, device_mb)
        pick = choose(largest)
        cards[str(gb)] = {"largest_b": largest, "exact": exact, "cell": cell(largest, exact),
                          "batch_size": pick and pick[0], "accum_steps": pick and pick[1]}
    return {"preset": preset, "image_size": size, "static_mb": static_mb,
            "per_sample_mb": per_sample_mb, "curve": records, "cards": cards}


def fit_line(points):
    """(intercept, slope) of the least-squares line through (b, MB) points; None, None for < 2."""
    if len({b for b, _ in points}) < 2:
        return None, None
    n = len(points)
    mb, my = sum(b for b, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((b - mb) * (y - my) for b, y in points) / sum((b - mb) ** 2 for b, _ in points)
    return my - slope * mb, slope


def format_table(header, rows):
    """The header line, then a markdown table: one row per preset and image size."""
    cards = " | ".join(f"{gb} GB" for gb in CARDS_GB)
    lines = [header, "", f"| preset | image | MB per sample | static MB | {cards} |",
             "|---|---:|---:|---:|" + "---|" * len(CARDS_GB)]
    for r in rows:
        numbers = ["–" if x is None else f"{x:.1f}" for x in (r["per_sample_mb"], r["static_mb"])]
        cells = [r["preset"], f"{r['image_size']} px", *numbers] + [r["cards"][str(gb)]["cell"] for gb in CARDS_GB]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Measuring: bench.py's child, one process per configuration.

def bench_settings(device, precision, threads=None):
    """bench.py's own option defaults with these overrides, as its parent hands them to a child."""
    argv = ["--device", device, "--precision", precision, "--warmup", "1", "--repeats", "1", "--json", ""]
    args = bench.parse_args(argv + (["--threads", str(threads)] if threads else []))[1]
    return {k: v for k, v in vars(args).items() if k != "one"}


def to_record(b, k, res):
    """A child's answer as one point of the curve."""
    error = res.get("error", "")
    if res.get("oom") or "out of memory" in error.lower() or "ALLOC_FAILED" in error:
        return {"b": b, "k": k, "oom": True}
    if error:
        return {"b": b, "k": k, "error": error}
    if res.get("peak_mb") is None:
        return {"b": b, "k": k, "error": "the child reported no peak memory"}
    return {"b": b, "k": k, "peak_mb": res["peak_mb"]}


def sweep(preset, size, settings, top_mb, bottom_mb, max_batch, timeout, run=None, log=print):
    """Peak MB of one MSD step at b = 8, 16, ... until it passes top_mb (the largest budget), runs
    out of memory, fails or reaches max_batch; then, while the smallest b measured does not fit
    bottom_mb (the smallest budget), b = 4, 2, 1. run(cfg, timeout): bench.run_child or a fake."""
    run = run or bench.run_child

    def one(b):
        k, t = accum_steps(b), time.time()
        cfg = {**settings, "kind": "msd", "preset": preset, "image_size": size, "batch_size": b,
               "k": k, "queue_size": 0}
        rec = to_record(b, k, run(cfg, timeout))
        what = (f"{rec['peak_mb']:.0f} MB" if "peak_mb" in rec else
                "out of memory" if rec.get("oom") else f"error: {rec['error']}")
        log(f"{preset} {size} px, b = {b}, k = {k}: {what} ({time.time() - t:.0f} s)")
        return rec

    records, b = [], min(START_B, max_batch)
    while b <= max_batch:
        records.append(one(b))
        if records[-1].get("peak_mb") is None or records[-1]["peak_mb"] > top_mb:
            break
        b *= 2
    b = records[0]["b"] // 2
    while b >= 1 and "error" not in records[0] and not fits(records[0], bottom_mb):
        records.insert(0, one(b))          # the smallest b tried ran out of memory or does not fit
        b //= 2
    return records


def device_total_mb(device, timeout=300):
    """The CUDA device's memory in MB, asked in a child (a CUDA context in this process would take
    memory from the children), or None."""
    code = ("import sys, torch; "
            "print(torch.cuda.get_device_properties(torch.device(sys.argv[1])).total_memory)")
    try:
        proc = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True,
                              timeout=timeout)
        return int(proc.stdout.split()[-1]) / MB
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError):
        return None


def measure(args, device, log=print):
    """The measured rows, the device's name and the precision (CUDA)."""
    settings = bench_settings(device, args.precision)
    machine = bench.run_child({**settings, "kind": "probe"}, args.timeout)
    if "error" in machine:
        raise runtime.InputError(f"could not start a measurement: {machine['error']}")
    device_mb = device_total_mb(device)
    log(f"measuring on {machine['device_name']} ({machine['device']}, {machine['precision']}"
        + (f", {device_mb / 1024:.1f} GB" if device_mb else "") + "), one child per configuration")
    budgets = [budget_mb(gb, args.reserve_gb) for gb in CARDS_GB]
    rows = []
    for preset, size in selected_rows(args):
        records = sweep(preset, size, settings, max(budgets), min(budgets), args.max_batch, args.timeout,
                        log=log)
        rows.append(summarise_row(preset, size, records, args.reserve_gb, device_mb))
    return rows, f"{machine['device_name']} ({machine['device']})", machine["precision"]


# -----------------------------------------------------------------------------
# The estimate's rows, and its check against a measurement on this CPU.

def estimate_rows(args):
    fp32 = args.precision == "fp32"
    top = max(budget_mb(gb, args.reserve_gb) for gb in CARDS_GB)
    rows = []
    for preset, size in selected_rows(args):
        cfg = make_config(preset, image_size=size, vocab_size=bench.VOCAB_SIZE)
        records, b = [], 1
        while b <= args.max_batch:
            records.append({"b": b, "k": accum_steps(b), "peak_mb": estimated_mb(cfg, b, fp32)})
            if records[-1]["peak_mb"] > top:
                break
            b *= 2
        e = estimate(cfg, fp32)
        rows.append(summarise_row(preset, size, records, args.reserve_gb,
                                  static_mb=e["static"] / MB, per_sample_mb=e["per_sample"] / MB))
    return rows


@contextlib.contextmanager
def environment(**values):
    """os.environ with these values while the block runs (child processes inherit it), then as it
    was before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cpu_check(batches=CHECK_BATCHES, timeout=600, run=None, log=print):
    """bench.py's CPU peak of one MSD step (tiny preset, 64 px, float32, one thread, k = 1) at each
    b, against the estimate's float32 variant: both lines' slopes (MB per sample) and intercepts.
    glibc maps each block over 64 KB on its own (MALLOC_MMAP_THRESHOLD_), so a freed tensor leaves
    the resident size, as it leaves torch.cuda.max_memory_allocated; elsewhere it does nothing."""
    run, settings = run or bench.run_child, bench_settings("cpu", "fp32", threads=1)
    cfg = make_config("tiny", vocab_size=bench.VOCAB_SIZE)
    measured = []
    with environment(MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1"):
        for b in batches:
            res = run({**settings, "kind": "msd", "preset": "tiny", "image_size": cfg.image_size,
                       "batch_size": b, "k": 1, "queue_size": 0}, timeout)
            if res.get("peak_mb") is None:
                return {"error": res.get("error", "bench.py reported no peak memory on this CPU")}
            measured.append(res["peak_mb"])
            log(f"check: tiny {cfg.image_size} px, fp32 on the CPU, b = {b}, k = 1: {res['peak_mb']:.1f} MB")
    estimated = [estimated_mb(cfg, b, fp32=True, window=1) for b in batches]
    m0, m_slope = fit_line(list(zip(batches, measured)))
    e0, e_slope = fit_line(list(zip(batches, estimated)))
    return {"batches": list(batches), "measured_mb": measured, "estimated_mb": estimated,
            "measured_per_sample_mb": m_slope, "estimated_per_sample_mb": e_slope,
            "measured_static_mb": m0, "estimated_static_mb": e0,
            "slope_error": (e_slope - m_slope) / m_slope, "bound": CHECK_BOUND}


def check_line(check):
    if "error" in check:
        return f"Check on this CPU not made: {check['error']}"
    c, peaks = check, " / ".join(f"{m:.0f}" for m in check["measured_mb"])
    return (f"Check of the estimate on this CPU (float32, bench.py's peak, tiny at 64 px, k = 1): measured "
            f"{peaks} MB at b = {' / '.join(map(str, c['batches']))}, "
            f"{c['measured_per_sample_mb']:.2f} MB per sample; the estimate's float32 variant "
            f"{c['estimated_per_sample_mb']:.2f} MB per sample ({100 * c['slope_error']:+.0f}%, "
            f"tested within ±{100 * c['bound']:.0f}%); static {c['estimated_static_mb']:.0f} MB estimated, "
            f"{c['measured_static_mb']:.0f} MB measured (bench.py subtracts a warm process's size, so "
            "its intercept is not the static memory).")


# -----------------------------------------------------------------------------
# The command line.

def selected_rows(args):
    return [(p, s) for p in args.presets for s in args.sizes]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.fits", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--device", default="auto", help="auto: measure on CUDA if there is one, else estimate; "
      "cuda, cuda:1: measure there; cpu: estimate (and check the estimate on this CPU)")
    a("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
      help="measured: as train.py (auto: bf16 where the card has it, else fp16); estimated: "
           "16-bit activations, or 4-byte ones for fp32")
    a("--presets", default="tiny,small", help="comma-separated presets (model.py PRESETS)")
    a("--sizes", default="64,128,224", help="comma-separated image sizes in pixels")
    a("--reserve-gb", type=float, default=1.0, help="GB of each card left out of its budget "
      "(the CUDA context, what the driver keeps, the allocator's cache)")
    a("--max-batch", type=int, default=8192, help="the largest b tried (a power of two)")
    a("--timeout", type=int, default=900, help="seconds allowed for each child process")
    a("--no-check", action="store_true", help="estimated: skip the check against a measurement "
      "on this CPU (3 short runs of bench.py, about half a minute)")
    a("--json", default="", metavar="PATH", help="also write the numbers there (per-sample and "
      "static MB, the memory curve, per card the largest b and the pick)")
    args = p.parse_args(argv)
    try:
        args.presets = [x for x in args.presets.split(",") if x]
        args.sizes = [int(x) for x in args.sizes.split(",") if x]
        for preset, size in selected_rows(args):
            make_config(preset, image_size=size)
    except ValueError as e:
        p.error(f"--presets / --sizes: {e}")
    power_of_two = args.max_batch >= 1 and not args.max_batch & (args.max_batch - 1)
    if not power_of_two or not 0 <= args.reserve_gb < min(CARDS_GB):
        p.error("--max-batch must be a power of two, --reserve-gb between 0 and the smallest card")
    return p, args


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        device = runtime.pick_device(args.device)   # no CUDA context: is_available() only
        if args.json:
            runtime.check_output_file("--json", args.json)
    except (ValueError, runtime.InputError) as e:
        parser.error(str(e))
    measured = device.type == "cuda"
    check = None
    if measured:
        try:
            rows, where, precision = measure(args, str(device))
        except runtime.InputError as e:
            print(e, file=sys.stderr)
            return 1
    else:
        rows, where = estimate_rows(args), f"none with CUDA here ({device.type})"
        precision = ("fp32 (4-byte activations)" if args.precision == "fp32"
                     else "16-bit autocast, bf16 or fp16 (2-byte activations)")
        if not args.no_check:
            check = cpu_check()
    kind = "measured (torch.cuda.max_memory_allocated)" if measured else "estimated, not measured"
    today = datetime.date.today().isoformat()
    header = (f"Largest micro-batch b per card, {kind} | device: {where} | precision: {precision} | "
              f"{today} | MSD, window N = {WINDOW} pairs, budget = card - "
              f"{args.reserve_gb:g} GB | b: the largest power of two that fits (≥: a lower bound)")
    table = format_table(header, rows)
    print("\n" + table)
    if check is not None:
        print("\n" + check_line(check))
    if args.json:
        runtime.write_text(args.json, json.dumps({
            "measured": measured, "device": where, "precision": precision, "date": today, "window": WINDOW,
            "reserve_gb": args.reserve_gb, "cards_gb": list(CARDS_GB), "rows": rows,
            "cpu_check": check, "command": sys.argv, "table": table}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
