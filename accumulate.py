"""One optimizer step over a window of k micro-batches: docs/method.md's steps 1-6, and CLIP's.

A small GPU holds a micro-batch of b pairs; the contrastive batch we want is N = k · b (and the
queue adds K more negatives). `msd_step` gets there without ever holding N student activations:

  1. teacher pass over the whole window, no gradient: I', T' (N, D). Only features are kept.
  2. banks B_I = [I' ; Q_I], B_T = [T' ; Q_T], frozen for the whole window.
  3-5. for each micro-batch j: student forward, its rows against the banks, targets from the
       teacher rows j·b … j·b + b − 1, loss_j normalised by the WINDOW size N, backward.
       Gradients add up over j to exactly the gradient of the one-batch loss over N.
  6. one optimizer step, one EMA update of the teacher, one enqueue of the whole window.

Why the EMA and the enqueue must wait for the end of the window:
  - an EMA update per micro-batch would move the teacher by m^k per optimizer step instead of m
    (0.995^8 ≈ 0.961): the teacher would trail the student k times less, and the momentum
    you tuned would silently depend on k;
  - an enqueue per micro-batch would put the current window into the queue while it is also in
    the bank, so a row would meet its own positive twice (once as the positive, once as a
    "negative" copy in the queue), and the queue would no longer be frozen within the window;
  - and the teacher features of later micro-batches would then come from a different teacher
    than the earlier ones: the window would not be one batch any more.

Under DDP every rank gathers the teacher windows of all ranks (no gradient), so the bank holds
world · N entries; rank r's rows find their positives at offset r · N. Each rank normalises by
its own N; the gradient all-reduce averages the ranks, which makes the whole thing the loss of
one batch of world · N rows. The same gathered window feeds the queue, so all ranks keep the
same queue.

The CLIP baselines reach beyond a micro-batch two other ways. The three side by side (forwards
counted per sample; a backward costs about two forwards):

  clip_naive_step  naive accumulation: k separate CLIP losses, b − 1 negatives per row;
                   1 forward + backward; the memory of b.
  clip_step        the feature cache (GradCache): the exact gradient of CLIP at batch N,
                   N − 1 negatives per row; 2 forwards (one without gradient) + backward,
                   about 4/3 of CLIP's compute, and the (world · N)² logits once per
                   micro-batch; the memory of b plus N x D features.
  msd_step         N + K − 1 negatives (window and queue), the teacher's soft targets; 1 student
                   forward + backward and 1 teacher forward; the memory of b, N x D features and
                   a teacher copy of the weights.

Depends on torch, the standard library, loss.py and momentum.py: to copy this file out, take those
two with it (the three travel together; model.py stands alone).
"""

import contextlib

import torch
import torch.distributed as dist

from loss import clip_loss, msd_loss, positive_matrix, soft_targets, upcast, word_patch_loss
from momentum import ema_update


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; the optimizer step was not taken."""


def _unwrap(model):
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def gather_window(x: torch.Tensor):
    """All ranks' windows concatenated in rank order (no gradient), and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]


def _optimizer_step(model, optimizer, loss, scaler, max_grad_norm):
    """Clip, step, and clamp logit_scale, the same way for every method."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss is {loss.item()}: the optimizer step was not taken")
    if scaler is not None:
        scaler.unscale_(optimizer)           # clip the true gradients, not the scaled ones
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    module = _unwrap(model)
    if hasattr(module, "clamp_logit_scale"):
        module.clamp_logit_scale()


def _check_unit_norm(teacher_features):
    """The loss takes dot products for cosines: features must have unit L2 norm (within what
    bf16 / fp16 autocast rounds to). Called once per step just before the optimizer step, whose
    finiteness check waits for the GPU anyway, so the look costs no extra synchronisation."""
    for where, features in teacher_features.items():
        worst = (features.norm(dim=-1) - 1).abs().max().item() if features.numel() else 0.0
        if worst > 1e-2:
            raise ValueError(f"msd_step: {where} returned features whose L2 norm is off 1 by up "
                             f"to {worst:.3g}; normalise them (torch.nn.functional.normalize(x, dim=-1))")


def msd_step(model, teacher, queue, optimizer, micro_batches, *, alpha: float, momentum: float,
             duplicate_aware: bool = True, autocast=contextlib.nullcontext(), scaler=None,
             max_grad_norm: float | None = None, word_patch: float = 0.0) -> torch.Tensor:
    """One optimizer step of momentum self-distillation over `micro_batches`.

    model: the student (a DualEncoder, or DDP / torch.compile around one), called as
      model(images, tokens) -> (image features, text features, s), the features of unit L2 norm
      and s = exp(logit_scale), a parameter the student must have. teacher: its EMA copy
      (momentum.make_teacher), with encode_image and encode_text returning unit-norm features:
      the loss compares features by their dot product, a cosine only at unit norm (open_clip's
      encode_image does not normalise by default: wrap it). Checked: a ValueError otherwise.
      The teacher has no temperature of its own: its similarities use the student's s, detached.
    queue: a loss.FeatureQueue of earlier windows' teacher features, or None for no queue.
    micro_batches: list of (images, tokens, report_ids) already on the device.
    duplicate_aware (train.py's default too): every bank entry with the row's report id is a
    positive (loss.positive_matrix); False: the row's own pair alone (one-hot).
    autocast: a context the forward passes run in, entered once per pass, as nanoGPT's `ctx`:
      torch.autocast("cuda", dtype=torch.bfloat16), or contextlib.nullcontext() for fp32.
    word_patch (default 0, off): the weight of loss.word_patch_loss, a word-patch alignment term
      of the student alone, within each micro-batch (like clip_naive_step, not over the window);
      micro-batch j's term is weighted by its share b_j / N of the window. The model must take
      model(images, tokens, words=True) (model.DualEncoder does).
    Returns the window's loss (a detached scalar): the same number a single batch of N would give,
    plus the word-patch terms when word_patch > 0.
    """
    optimizer.zero_grad(set_to_none=True)
    student = _unwrap(model)
    if not isinstance(getattr(student, "logit_scale", None), torch.nn.Parameter):
        raise ValueError(f"msd_step: the student ({type(student).__name__}) has no logit_scale "
                         f"parameter; the temperature is s = exp(logit_scale), as in model.DualEncoder")
    sizes = [mb[0].shape[0] for mb in micro_batches]
    N = sum(sizes)

    # 1. Teacher pass over the whole window without gradient; keep only features, in float32.
    with torch.no_grad(), autocast:
        t_img = torch.cat([upcast(teacher.encode_image(x)) for x, _, _ in micro_batches])  # (N, D)
        t_txt = torch.cat([upcast(teacher.encode_text(t)) for _, t, _ in micro_batches])   # (N, D)
    ids = torch.cat([i for _, _, i in micro_batches])                                     # (N,)

    # 2. Banks: every rank's window, then the queue. Frozen until the window is done.
    w_img, offset = gather_window(t_img)           # (world·N, D), this rank's rows start at offset
    w_txt, _ = gather_window(t_txt)
    w_ids, _ = gather_window(ids)
    bank_img, bank_txt, bank_ids = w_img, w_txt, w_ids
    if queue is not None:
        q_img, q_txt, q_ids = queue.contents()      # (n_q, D) each
        bank_img = torch.cat([w_img, q_img])        # (world·N + n_q, D)
        bank_txt = torch.cat([w_txt, q_txt])
        bank_ids = torch.cat([w_ids, q_ids])
    scale = student.logit_scale.exp().detach()      # the teacher's similarities use s, detached

    # 3-5. Student micro-batches against the frozen banks; gradients accumulate in .grad.
    losses = []
    start = 0
    for j, (images, tokens, row_ids) in enumerate(micro_batches):
        rows = slice(start, start + sizes[j])
        P = positive_matrix(row_ids, bank_ids, offset + start, duplicate_aware, bank_img.dtype)
        y_i2t = soft_targets(t_img[rows], bank_txt, scale, alpha, P)
        y_t2i = soft_targets(t_txt[rows], bank_img, scale, alpha, P)
        # Under DDP, all-reduce the gradients once, on the last micro-batch only.
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                out = model(images, tokens, words=True) if word_patch else model(images, tokens)
            img, txt, s, *local = out
            loss_j = msd_loss(img, txt, bank_img, bank_txt, y_i2t, y_t2i, s, normaliser=N)
            if word_patch:
                own_ids = row_ids if duplicate_aware else None
                loss_j = loss_j + word_patch * sizes[j] / N * word_patch_loss(*local, s, own_ids)
            (scaler.scale(loss_j) if scaler is not None else loss_j).backward()
        losses.append(loss_j.detach())
        start += sizes[j]
    total = torch.stack(losses).sum()

    # 6. One optimizer step, one EMA update, one enqueue of the whole (gathered) window.
    _check_unit_norm({"teacher.encode_image": t_img, "teacher.encode_text": t_txt})
    _optimizer_step(model, optimizer, total, scaler, max_grad_norm)
    ema_update(teacher, student, momentum)
    if queue is not None:
        queue.enqueue(w_img, w_txt, w_ids)
    return total


def clip_naive_step(model, optimizer, micro_batches, *, duplicate_aware: bool = True,
                    autocast=contextlib.nullcontext(), scaler=None,
                    max_grad_norm: float | None = None) -> torch.Tensor:
    """Plain CLIP on one micro-batch, or CLIP with NAIVE gradient accumulation over k of them.

    Naive accumulation averages k independent CLIP losses: each row sees only the b − 1
    negatives of its own micro-batch, so the contrastive batch stays b whatever k is. Under DDP
    each rank's micro-batches stay on their own too. duplicate_aware: a row's positives are every
    pair of its micro-batch with the same report id (loss.clip_loss), else its own pair alone.
    Returns the mean micro-batch loss."""
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    losses = []
    for j, (images, tokens, ids) in enumerate(micro_batches):
        last = j == k - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                img, txt, s = model(images, tokens)
            loss_j = clip_loss(img, txt, s, ids if duplicate_aware else None) / k
            (scaler.scale(loss_j) if scaler is not None else loss_j).backward()
        losses.append(loss_j.detach())
    total = torch.stack(losses).sum()
    _optimizer_step(model, optimizer, total, scaler, max_grad_norm)
    return total


def clip_step(model, optimizer, micro_batches, *, duplicate_aware: bool = True,
              autocast=contextlib.nullcontext(), scaler=None,
              max_grad_norm: float | None = None) -> torch.Tensor:
    """CLIP over the WHOLE window of k micro-batches (and every rank): the exact gradient of CLIP
    at batch N = k · b, with the activation memory of a micro-batch of b.

    The feature cache of GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch
    Size under Memory Limited Setup") and open_clip's --accum-freq:
      1. a forward of every micro-batch WITHOUT gradient caches the window's features, I and T
         (N, D) (all-gathered under DDP: world · N rows, no gradient);
      2. per micro-batch j: its features again, now with gradient, put in place of its cached
         rows; CLIP's symmetric InfoNCE over the whole window; backward.
    CLIP's loss couples every row with every other (each softmax runs over the whole window), so
    it cannot be split into per-row pieces as MSD's loss against a frozen bank can. But its
    gradient can: by the chain rule, dL/dθ = Σ_j (dL/dF_j) (dF_j/dθ), where F_j are micro-batch
    j's features, and dL/dF_j needs only the VALUES of the other rows, which the cache holds.
    Each backward in step 2 adds exactly one term of that sum. So nothing is divided by k: every
    micro-batch's loss is the whole window's loss L, differentiated through one part of it.

    What it assumes: the forward in step 2 computes exactly the features cached in step 1. With
    dropout, stochastic depth, random token masking (anything random in the model), or a
    different autocast, train/eval mode or batch composition between the two, the rows put in
    place would not be the cached ones: the sum of the backward passes would then be the gradient
    of no single loss, and the returned loss would not be that of the batch. (GradCache's fix for
    random layers: save the RNG state before each cache forward, restore it before the second.)
    model.py's encoders have no random layers and no batch statistics.

    Under DDP the loss is the one of a batch of world · N rows, identical on every rank; rank r
    differentiates it through its own rows (at offset r · N of the gathered cache) only, so each
    rank multiplies its loss by world before DDP's all-reduce averages the ranks. One all-reduce
    per optimizer step: no_sync on every micro-batch but the last.

    duplicate_aware: a row's positives are every pair of the whole window (every rank's) with the
    same report id, as in MSD's bank (loss.clip_loss); else its own pair alone (one-hot).

    With one micro-batch in one process there is nothing to cache: plain CLIP, one forward.
    Returns the window's loss (a detached scalar), the one a single batch of world · N gives."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if len(micro_batches) == 1 and not distributed:
        return clip_naive_step(model, optimizer, micro_batches, duplicate_aware=duplicate_aware,
                               autocast=autocast, scaler=scaler, max_grad_norm=max_grad_norm)
    world = dist.get_world_size() if distributed else 1
    optimizer.zero_grad(set_to_none=True)
    sizes = [mb[0].shape[0] for mb in micro_batches]

    # 1. The cache: every micro-batch through the same model and autocast as step 2, no gradient.
    with torch.no_grad(), autocast:
        feats = [model(images, tokens) for images, tokens, _ in micro_batches]
    c_img, offset = gather_window(torch.cat([upcast(f[0]) for f in feats]))   # (world·N, D)
    c_txt, _ = gather_window(torch.cat([upcast(f[1]) for f in feats]))        # (world·N, D)
    c_ids = gather_window(torch.cat([i for _, _, i in micro_batches]))[0] if duplicate_aware else None
    del feats

    # 2. One micro-batch at a time with gradient, its rows live among the cached ones.
    #
    # The logit_scale trap: s = exp(logit_scale) multiplies the logits of the whole window in
    # every micro-batch's loss, so if each loss_j let gradient flow into s, logit_scale would
    # receive the full dL/ds once per micro-batch: k times too much (a plain implementation of
    # the cache, open_clip's --accum-freq among them, does this). Its gradient, unlike the
    # encoders', is not split over micro-batches: s is one number that touches every logit.
    # So s is detached in every loss_j, and dL/ds is added exactly once, from the loss of the
    # cached window with s live. It goes into the LAST backward, because DDP's synchronised
    # backward must see every parameter, logit_scale included. Under DDP every rank adds the
    # same dL/ds and the all-reduce averages them: once, so that term is not multiplied by world.
    start = 0
    for j, (images, tokens, _) in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                img, txt, s = model(images, tokens)
            a, z = offset + start, offset + start + sizes[j]      # this micro-batch's rows
            all_img = torch.cat([c_img[:a], upcast(img), c_img[z:]])   # (world·N, D), b rows live
            all_txt = torch.cat([c_txt[:a], upcast(txt), c_txt[z:]])
            loss_j = world * clip_loss(all_img, all_txt, s.detach(), c_ids)
            if last:
                window_loss = clip_loss(c_img, c_txt, s, c_ids)   # cached features: only s is live
                loss_j = loss_j + window_loss
            (scaler.scale(loss_j) if scaler is not None else loss_j).backward()
        start += sizes[j]
    total = window_loss.detach()
    _optimizer_step(model, optimizer, total, scaler, max_grad_norm)
    return total
