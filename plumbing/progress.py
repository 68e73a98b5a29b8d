"""What train.py prints and logs as it goes: a line and a metrics.jsonl row every --log-every steps,
with the loss, the schedule's values, speed, peak memory, time elapsed and left, and in fp16 the
steps the loss scaler skipped."""

import json

from plumbing.runtime import WriteError, fmt_time, peak_memory_mb, write_text


def log_step(parts, args, run, step, clock, lr, alpha, m):
    """Print the step's line and append its row to metrics.jsonl."""
    per_step = clock.per_step()
    mem = peak_memory_mb(run.device)
    row = {"step": step, "loss": round(clock.loss, 5), "lr": lr, "alpha": alpha, "momentum": m,
           "temperature": round(1 / parts.student.logit_scale.exp().item(), 5),
           "samples_per_s": round(args.batch_size * args.accum_steps * run.world / per_step, 1),
           "peak_mem_mb": None if mem is None else round(mem, 1),
           "elapsed_s": round(clock.elapsed(), 1), "eta_s": round((args.steps - step) * per_step, 1)}
    if parts.scaler is not None:
        row["skipped_steps"] = parts.skipped
    teacher = f"alpha {alpha:.2f} | m {m:.4f} | " if args.method == "msd" else ""  # CLIP has neither
    skipped = f"{parts.skipped} skipped (fp16 overflow) | " if parts.skipped else ""
    print(f"step {step:5d}/{args.steps} | loss {clock.loss:.4f} | lr {lr:.2e} | {teacher}"
          f"temp {row['temperature']:.4f} | {row['samples_per_s']:.0f} samples/s | "
          f"mem {'n/a' if mem is None else f'{mem:.0f} MB'} | {skipped}{fmt_time(row['elapsed_s'])} elapsed, "
          f"{fmt_time(row['eta_s'])} left", flush=True)
    append_row(parts, row)


def append_row(parts, row):
    """One row of metrics.jsonl; a failed write says which checkpoint is still good."""
    try:
        write_text(parts.metrics_path, json.dumps(row) + "\n", mode="a")
    except WriteError as e:
        raise parts.still_good(e) from None
