"""What train.py does before its loop, stage by stage, and the run's start-up lines: none of it is
the method, all of it is what a run needs to be safe to start and to resume.

    claim_folders      --out (and --data-cache) created and locked for this run
    resume_or_start    the checkpoint --resume continues, every check first; or a new run
    read_init_source   --init-from: another run's checkpoint and tokenizer to start from
    load_training_data the synthetic set or the user's manifest, images as uint8
    size_the_queue     the window and the queue checked against the data; --queue-size auto
    tokenize_reports   a WordPiece tokenizer trained (or read back, or --init-from's), tokens, ids
    load_init_weights  --init-from's student and teacher into the new run's, if their shapes fit
    load_benchmark     what to evaluate on: the user's sets, the synthetic benchmark, or nothing
    drop_rows_after    metrics.jsonl cut back to the checkpoint a resumed run starts from
    resumed_note       where a resumed run continues from, and on what
    describe_run       the model and what one optimizer step computes, in two lines
"""

import dataclasses
import json
import os

import torch.distributed as dist

import data
from evaluation import sets as eval_sets
from manifests import read as manifest
from model import PRESETS, make_config
from plumbing.checkpoint import read_checkpoint, read_for_resume
from plumbing.options import QUEUE_CAP, default_queue_size
from plumbing.runtime import (FolderLock, InputError, make_folder, precision_reason, reason,
                              write_text)
from synthetic import dataset as synthetic


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


def tokenize_reports(args, pairs, ckpt, run, init=None, log=print):
    """A new run trains a WordPiece tokenizer on its reports (rank 0, saved beside the checkpoint);
    a resumed one reads it back; one --init-from another run takes that run's. Adds pairs["tokens"]
    (n, L) and pairs["ids"] (n,), the report ids that duplicate-aware positives compare. Returns
    (tokenizer, model config)."""
    tok_path = os.path.join(args.out, "tokenizer.json")
    if ckpt is None and run.master:
        if init is not None:
            with open(init["tokenizer"], encoding="utf-8") as f:
                write_text(tok_path, f.read())
        else:
            write_text(tok_path, data.train_tokenizer(pairs["texts"], args.vocab_size).to_str())
    if ckpt is None and run.ddp:
        dist.barrier()                                # rank 0 wrote tokenizer.json
    try:
        tokenizer = data.load_tokenizer(tok_path)
    except Exception as e:   # the tokenizers library raises a bare Exception for a malformed file
        raise InputError(f"cannot read {tok_path}: {str(e).splitlines()[0]}") from None
    cfg = make_config(args.preset, image_size=args.image_size, patch_size=args.patch_size,
                      in_channels=args.channels,
                      stem=args.stem, pool=args.pool, registers=args.registers,
                      attention_window=args.attention_window,
                      vocab_size=tokenizer.get_vocab_size())
    if ckpt is not None and ckpt["config"]["model"]["vocab_size"] != cfg.vocab_size:
        raise InputError(f"--resume: {tok_path} has {cfg.vocab_size} tokens, the checkpoint's model "
                         f"{ckpt['config']['model']['vocab_size']}: it is another run's tokenizer")
    pairs["tokens"], _ = data.tokenize(tokenizer, pairs["texts"], cfg.context_length)   # (n, L)
    pairs["ids"] = data.report_ids(pairs["texts"])                                       # (n,)
    if init is not None:
        check_init_fits(init, cfg, args)
        log(check_init_tokenizer(tokenizer, pairs["texts"], pairs["tokens"], init["tokenizer"]))
    return tokenizer, cfg


def read_init_source(args):
    """--init-from: {"ckpt", "path", "tokenizer", "teacher"} of the run to start from (a folder with
    ckpt.pt and tokenizer.json, or the ckpt.pt; local files only), or None. One line for a path
    that is not there or not a train.py checkpoint."""
    if not args.init_from:
        return None
    where = args.init_from
    ckpt_path = os.path.join(where, "ckpt.pt") if os.path.isdir(where) else where
    if not os.path.isfile(ckpt_path):
        raise InputError(f"--init-from {where}: no checkpoint at {ckpt_path}")
    tok_path = os.path.join(os.path.dirname(ckpt_path), "tokenizer.json")
    if not os.path.isfile(tok_path):
        raise InputError(f"--init-from {where}: {tok_path} is missing; the weights mean nothing "
                         f"without the tokenizer they were trained with")
    ckpt = read_checkpoint(ckpt_path, "give --init-from another run")
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("student"), dict)
            and isinstance(ckpt.get("config"), dict) and "model" in ckpt["config"]):
        raise InputError(f"--init-from {where}: {ckpt_path} is not a train.py checkpoint (no student "
                         f"weights or model config)")
    return {"ckpt": ckpt, "path": ckpt_path, "tokenizer": tok_path,
            "teacher": isinstance(ckpt.get("teacher"), dict)}


def check_init_fits(init, cfg, args):
    """The model this run builds must be the one --init-from saved: one line naming the settings
    that differ (and the preset the checkpoint's model is, when it is one)."""
    saved, built = init["ckpt"]["config"]["model"], dataclasses.asdict(cfg)
    differ = [k for k in built if saved.get(k) != built[k]]
    if not differ:
        return
    fields = {k: v for k, v in saved.items() if k in PRESETS["tiny"]}
    named = next((n for n, p in PRESETS.items() if all(fields.get(k) == v for k, v in p.items()
                                                       if k != "image_size")), None)
    which = f"a {named!r} preset model" if named else "a model of no preset"
    raise InputError(f"--init-from {args.init_from}: the checkpoint holds {which}, this run builds "
                     f"--preset {args.preset}: " + ", ".join(
                         f"{k} {saved.get(k)} (checkpoint) vs {built[k]}" for k in differ[:4]))


def check_init_tokenizer(tokenizer, texts, tokens, source):
    """The source's tokenizer on this run's reports: a word its vocabulary lacks is spelled piece by
    piece (no loss), a character it never saw becomes [UNK] (lost). Refuses more than 1% [UNK]
    tokens; otherwise returns a line for the log saying how well the vocabulary fits."""
    unk = tokenizer.token_to_id("[UNK]")
    real = tokens[tokens != 0]
    share = float((real == unk).float().mean()) if real.numel() else 0.0
    vocab = tokenizer.get_vocab()
    words = [w for t in texts[:2000] for w in data.normalise_report(t).split()]
    pieces = sum(w not in vocab for w in words) / max(1, len(words))
    if share > 0.01:
        raise InputError(f"--init-from: {share:.1%} of this data's tokens are [UNK] under {source}: "
                         f"characters its reports never had, which the model cannot read. Train "
                         f"without --init-from, or with data in the source's alphabet")
    return (f"init: the source's tokenizer on these reports: {pieces:.1%} of words not in its "
            f"vocabulary (spelled piece by piece), {share:.2%} of tokens [UNK]")


def load_init_weights(init, student, teacher):
    """--init-from's student into `student` and its teacher into `teacher` (the student's weights
    when it has none: a CLIP checkpoint); one line naming the first parameters that do not fit."""
    def clean(state):        # weights saved from a compiled or DDP-wrapped model carry a prefix
        return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    state = clean(init["ckpt"]["student"])
    want = student.state_dict()
    bad = [f"{k} {tuple(state[k].shape) if k in state else 'missing'} (checkpoint) vs "
           f"{tuple(v.shape)}" for k, v in want.items() if k not in state or state[k].shape != v.shape]
    bad += [f"{k} (checkpoint only)" for k in state if k not in want]
    if bad:
        raise InputError(f"--init-from {init['path']}: its weights do not fit this model: "
                         + "; ".join(bad[:3]))
    student.load_state_dict(state)
    if teacher is not None:
        teacher.load_state_dict(clean(init["ckpt"]["teacher"]) if init["teacher"] else state)


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


def drop_rows_after(metrics_path, step):
    """Drop the rows an interrupted run logged after its checkpoint: the resumed run redoes them
    (a new run, step 0, starts the file afresh: rows of a run that died before its first
    checkpoint are not this run's)."""
    if not os.path.exists(metrics_path):
        return
    with open(metrics_path) as f:
        rows = [line for line in f if json.loads(line).get("step", 0) <= step]
    write_text(metrics_path, "".join(rows))


def resumed_note(ckpt, ckpt_path, device, precision):
    """The line a resumed run logs: where it resumed, and whether it computes elsewhere now."""
    note = f"resumed from {ckpt_path} at step {ckpt['step']}"
    was = (ckpt["config"].get("device_type"), ckpt["config"].get("precision"))
    if None not in was and was != (device.type, precision):
        note += (f"\nnote: this run computed on {was[0]} in {was[1]} and continues on {device.type} "
                 f"in {precision}: the same run, but not bit for bit what it would have computed")
    return note


def describe_run(args, parts, run, queue_note):
    """The start-up lines: the model, the device, and what one optimizer step computes."""
    N = args.batch_size * args.accum_steps * run.world
    model = (f"model: {args.preset} preset, {parts.student.num_params() / 1e6:.2f}M parameters, "
             f"{args.image_size} px, {args.channels} channel(s) | device {run.device}, "
             f"{parts.precision} ({precision_reason(args.precision, run.device)}), {run.world} process(es)")
    if args.method == "msd":
        what = "momentum self-distillation"
        queue = f", queue {args.queue_size}{queue_note}"
        if args.queue_start and args.queue_size:
            queue += f" from step {args.queue_start}"
        half_life = (f", half-life {args.momentum_half_life:g} of the run"
                     if args.momentum_half_life else "")
        extra = (f"{queue}, alpha {args.alpha} (warm-up {args.alpha_warmup} steps), momentum "
                 f"{parts.base_momentum:.4g} ({args.momentum_schedule}{half_life})")
        if args.word_patch:
            extra += f", word-patch term x {args.word_patch:g} within each micro-batch"
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
