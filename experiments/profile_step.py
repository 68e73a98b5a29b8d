"""Where does a training step's time go? This script times each part of an MSD step on its own.

    python -m experiments.profile_step     # the default step: tiny, b = 32, k = 2, no queue, the CPU
    python -m experiments.profile_step --accum-steps 4 --queue-size 2048   # the ablation's MSD arms
    python -m experiments.profile_step --threads 1 --json results/profile.json
    python -m experiments.profile_step --device cuda     # bf16 or fp16 autocast, as train.py picks

A whole training step (train.py's: a window of N = k·b pairs and `accumulate.msd_step`) is timed
first (median of --repeats). Then each of its parts runs alone on inputs of the same shapes, for
the whole window of k micro-batches:

    window + augmentation   gather N images, to float, data.train_augment (the whole window at once)
    teacher forward         both towers over the window, no gradient
    image stem              the student's ConvStem, forward + backward
    image attention         LayerNorm + self-attention of every vision block, forward + backward
    image MLP               LayerNorm + MLP of every vision block, forward + backward
    text tower              the student's whole text transformer, forward + backward
    loss                    positives, the teacher's soft targets, msd_loss against the bank (N + K)
    optimizer + EMA         gradient clipping, AdamW, the teacher's EMA, the enqueue

The parts do not cover everything (projections, pooling, normalisation, Python between them),
and run alone they miss what the whole step shares (caches warm from the previous part), so their
sum is printed beside the measured step: the table says where the time goes, not to the
millisecond. Random inputs of the right shapes, except the reports, whose token lengths matter
(train.py trims padding per micro-batch): those are real synthetic reports. Every forward pass runs
in the precision train.py would choose on the device (--precision auto; plumbing/runtime.py), the
optimizer part with train.py's loss scaler when that is fp16.
"""

import argparse
import json
import os
import statistics
import time

import torch

import data
from synthetic import dataset as synthetic
from accumulate import _optimizer_step, msd_step
from loss import FeatureQueue, msd_loss, positive_matrix, soft_targets
from model import DualEncoder, make_config, param_groups
from momentum import ema_update, make_teacher
from plumbing.runtime import pick_device, pick_precision, precision_reason


def timed(fn, repeats, warmup, device):
    """Median seconds of fn() over repeats calls, after warmup untimed calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fwd_bwd(module_fn, x, amp):
    """Forward (inside the autocast context amp) and backward of module_fn on a fresh leaf copy of x
    (so a float input gets a gradient too, as it does inside the network)."""
    x = x.detach().requires_grad_(x.is_floating_point())
    with amp:
        out = module_fn(x)
    out.float().sum().backward()


def setup(args, device):
    cfg = make_config(args.preset)
    n = args.batch_size * args.accum_steps
    train = synthetic.render_synthetic("train", max(n, 512), cfg.image_size, workers=1)
    tokenizer = data.train_tokenizer(train["texts"], cfg.vocab_size)
    cfg = make_config(args.preset, vocab_size=tokenizer.get_vocab_size())
    tokens, _ = data.tokenize(tokenizer, train["texts"], cfg.context_length)
    ids = data.report_ids(train["texts"])
    torch.manual_seed(0)
    student = DualEncoder(cfg).to(device)
    teacher = make_teacher(student)
    queue = FeatureQueue(args.queue_size, cfg.embed_dim).to(device)
    with torch.no_grad():   # a full queue, as after the first steps of a run (none: nothing to fill)
        feats = torch.nn.functional.normalize(torch.randn(args.queue_size, cfg.embed_dim, device=device), dim=-1)
        queue.enqueue(feats, feats.roll(1, 0), torch.arange(args.queue_size, device=device) + 10**6)
    optimizer = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    return cfg, train, tokens, ids, student, teacher, queue, optimizer


def profile(args):
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, train, tokens, ids, student, teacher, queue, optimizer = setup(args, device)
    amp, scaler, args.precision = pick_precision(args.precision, device)   # amp: `with amp:` forwards
    b, k = args.batch_size, args.accum_steps
    N = b * k
    idx = torch.arange(N)

    def window():
        images = data.train_augment(train["images"][idx].to(device).float() / 255)   # as train.py
        batches = []
        for im, tok, rid in zip(*(t.split(b) for t in (images, tokens[idx], ids[idx]))):
            tok = data.trim_padding(tok)                                     # as train.py
            batches.append((im, tok.to(device), rid.to(device)))
        return batches

    rep = dict(repeats=args.repeats, warmup=args.warmup, device=device)
    step = timed(lambda: msd_step(student, teacher, queue, optimizer, window(), alpha=0.4,
                                  momentum=0.98, duplicate_aware=True, max_grad_norm=1.0,
                                  autocast=amp, scaler=scaler), **rep)
    batches = window()

    parts = {}
    parts["window + augmentation"] = timed(window, **rep)

    def teacher_forward():
        with torch.no_grad(), amp:
            for im, tok, _ in batches:
                teacher.encode_image(im), teacher.encode_text(tok)
    parts["teacher forward"] = timed(teacher_forward, **rep)

    vis = student.visual
    stem_in = [im for im, _, _ in batches]
    with torch.no_grad():
        tokens_in = [vis.patch_embed(im).flatten(2).transpose(1, 2) + vis.pos_embed for im in stem_in]
    parts["image stem"] = timed(lambda: [fwd_bwd(vis.patch_embed, im, amp) for im in stem_in], **rep)
    parts["image attention"] = timed(lambda: [fwd_bwd(lambda x, blk=blk: blk.attn(blk.ln1(x)), x, amp)
                                              for x in tokens_in for blk in vis.blocks], **rep)
    parts["image MLP"] = timed(lambda: [fwd_bwd(lambda x, blk=blk: blk.mlp(blk.ln2(x)), x, amp)
                                        for x in tokens_in for blk in vis.blocks], **rep)
    parts["text tower"] = timed(lambda: [fwd_bwd(lambda t: student.text(t), tok, amp)
                                         for _, tok, _ in batches], **rep)

    D = cfg.embed_dim
    q_img, q_txt, q_ids = queue.contents()
    bank_img = torch.cat([torch.nn.functional.normalize(torch.randn(N, D, device=device), dim=-1), q_img])
    bank_txt = torch.cat([torch.nn.functional.normalize(torch.randn(N, D, device=device), dim=-1), q_txt])
    bank_ids = torch.cat([ids[idx].to(device), q_ids])
    scale = student.logit_scale.exp().detach()

    def loss_part():
        for j, (_, _, rid) in enumerate(batches):
            rows_ = slice(j * b, (j + 1) * b)
            P = positive_matrix(rid, bank_ids, j * b, True, bank_img.dtype)
            y_i2t = soft_targets(bank_img[rows_], bank_txt, scale, 0.4, P)
            y_t2i = soft_targets(bank_txt[rows_], bank_img, scale, 0.4, P)
            img = bank_img[rows_].clone().requires_grad_()
            txt = bank_txt[rows_].clone().requires_grad_()
            s = student.logit_scale.exp()
            with amp:
                loss = msd_loss(img, txt, bank_img, bank_txt, y_i2t, y_t2i, s, normaliser=N)
            loss.backward()
    parts["loss"] = timed(loss_part, **rep)

    for p in student.parameters():        # a gradient of the right shapes for the optimizer
        p.grad = torch.randn_like(p) * 1e-3

    def optimizer_part():
        _optimizer_step(student, optimizer, torch.tensor(1.0), scaler, 1.0)
        ema_update(teacher, student, 0.98)
        queue.enqueue(bank_img[:N], bank_txt[:N], bank_ids[:N])
    parts["optimizer + EMA"] = timed(optimizer_part, **rep)
    return step, parts, N


def format_report(step, parts, N):
    total = sum(parts.values())
    lines = [f"{'part':<24} {'ms/step':>8} {'share':>6}", "-" * 40]
    for name, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<24} {1e3 * sec:8.1f} {sec / step:6.1%}")
    lines += ["-" * 40,
              f"{'sum of the parts':<24} {1e3 * total:8.1f} {total / step:6.1%}",
              f"{'whole step, measured':<24} {1e3 * step:8.1f} {1:6.1%}   ({N / step:.0f} samples/s)"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--preset", default="tiny", help="model size (model.py PRESETS)")
    a("--batch-size", type=int, default=32, help="micro-batch b (train.py's default)")
    a("--accum-steps", type=int, default=2, help="k micro-batches per step (train.py's default)")
    a("--queue-size", type=int, default=0, help="MSD queue K, kept full (train.py's default: none)")
    a("--device", default="cpu", help="cpu or cuda (bench.py measures compile)")
    a("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
      help="auto: as train.py, bf16 autocast on a card with bf16 tensor cores, fp16 with a loss "
           "scaler on an older CUDA card, fp32 on the CPU and MPS")
    a("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    a("--repeats", type=int, default=7, help="timed calls per part (median)")
    a("--warmup", type=int, default=2, help="untimed calls per part first")
    a("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    for name in ("batch_size", "accum_steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.queue_size < 0:
        p.error(f"--queue-size must be >= 0, got {args.queue_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    why = precision_reason(args.precision, pick_device(args.device))
    step, parts, N = profile(args)
    print(f"profile of one MSD step: {args.preset} preset, b = {args.batch_size} x k = "
          f"{args.accum_steps}, queue {args.queue_size}, {args.device}, {args.precision} ({why}), "
          f"{torch.get_num_threads()} "
          f"thread(s), torch {torch.__version__}, median of {args.repeats}\n")
    print(format_report(step, parts, N))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"step_s": step, "parts_s": parts, "window": N, "settings": vars(args),
                       "threads": torch.get_num_threads(), "torch": torch.__version__}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
