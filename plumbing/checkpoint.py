"""Checkpoints: what train.py saves, how it is written so that nothing is ever torn, and how it is
read back, by `train.py --resume` (every setting compared first) and by eval.py (the model alone).

A checkpoint holds tensors and plain Python values only, so `torch.load(weights_only=True)` reads
it and a checkpoint from a stranger cannot run code. Its "config" says how to rebuild the model
("model": model.ModelConfig's fields) and what run made it ("train": train.py's arguments, every
default resolved to a number, so that a resume compares numbers).
"""

import dataclasses
import os
import zipfile

import torch

from model import DualEncoder, ModelConfig
from plumbing.runtime import InputError

# Options that may differ between a run and its --resume: they change what is logged, saved or
# evaluated, or where the run computes, never which numbers it computes on a given device
# (--init-from only chooses the weights a run starts from, and the checkpoint holds them since).
RESUME_MAY_CHANGE = {"resume", "init_from", "out", "save_every", "eval_every", "log_every", "device", "workers",
                     "data_cache", "grad_dump", "compile", "interrupt_at", "kill_at",
                     "eval_per_class", "eval_retrieval", "eval_grounding", "eval_manifest", "prompts",
                     "retrieval_manifest", "grounding_manifest"}
# The layout of the checkpoints and the meaning of their settings. Raised whenever a saved setting
# would mean another computation (3: --duplicate-aware applies to --method clip too); --resume
# refuses a checkpoint of another format, eval.py reads any (it needs the weights alone).
FORMAT = 3


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# -----------------------------------------------------------------------------
# Writing (train.py writes the state with runtime.save_atomic: a temporary file renamed when
# complete, a full disk one line).

def training_state(*, student, teacher, queue, optimizer, scaler, step, samples_seen, rng, model_cfg,
                   args, device_type, precision):
    """Everything the next step depends on: weights, teacher, queue, optimizer, loss scaler, step and
    every rank's random state. device_type and precision are where the run computed, so that a
    resume elsewhere can say that it will not be bit for bit the same run."""
    return {
        "student": student.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "queue": queue.state_dict() if queue is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": step,
        "samples_seen": samples_seen,
        "rng": rng,
        "config": {"model": dataclasses.asdict(model_cfg), "train": dict(vars(args)),
                   "format": FORMAT, "device_type": device_type, "precision": precision},
    }


# -----------------------------------------------------------------------------
# Reading.

def read_checkpoint(ckpt_path, advice):
    """torch.load a train.py checkpoint with weights_only=True. A file torch cannot read raises
    InputError in one line naming it, what is wrong with it and `advice` (what to do). Torch's own
    message is never passed on: for some files it advises reloading with weights_only=False, which
    would let the file run code, and this project never suggests that."""
    try:
        return torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except OSError as e:  # the file itself: a folder, no permission
        raise InputError(f"cannot read checkpoint {ckpt_path}: {e.strerror or e}") from None
    except Exception:  # torch raises many types for a bad file (RuntimeError, EOFError, KeyError, ...)
        raise InputError(f"checkpoint {ckpt_path} {_what_is_wrong(ckpt_path)}: {advice}") from None


def _what_is_wrong(ckpt_path):
    """Why torch could not load the file, from its bytes. torch.save writes a zip archive; a zip
    ends with its central directory, so a copy cut short or a save that filled the disk starts
    like a checkpoint and lacks that end."""
    with open(ckpt_path, "rb") as f:
        head = f.read(4)
    if not head:
        return "is empty"
    if head != b"PK\x03\x04":
        return "is not a checkpoint of this project (torch.save writes a zip archive; this is not one)"
    if not zipfile.is_zipfile(ckpt_path):
        return "is truncated (a copy cut short, or a disk that filled up while it was written)"
    return ("is corrupted, or holds objects other than tensors and plain values (not a checkpoint "
            "of this project)")


def load_checkpoint(path, use_teacher=False, device="cpu"):
    """Rebuild the model saved by train.py, for evaluation. path: the run's folder or its ckpt.pt;
    the tokenizer is tokenizer.json beside the .pt. Returns (model in eval mode on device,
    tokenizer, checkpoint)."""
    from data import load_tokenizer

    ckpt_path = os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path
    if not os.path.isfile(ckpt_path):
        raise InputError(f"checkpoint not found: {ckpt_path}")
    tokenizer_path = os.path.join(os.path.dirname(ckpt_path), "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        raise InputError(f"tokenizer not found: {tokenizer_path} (train.py writes it beside ckpt.pt)")
    ckpt = read_checkpoint(ckpt_path, "train it again, or give --checkpoint another run")
    key = "teacher" if use_teacher else "student"
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(key), dict) or \
            "model" not in ckpt.get("config", {}):
        what = "no EMA teacher (a --method clip run has none)" if (
            use_teacher and isinstance(ckpt, dict) and "student" in ckpt) else \
            f"no {key!r} weights or model config"
        raise InputError(f"{ckpt_path} is not a train.py checkpoint with a {key}: {what}")
    # Weights saved from a compiled or DDP-wrapped model carry a prefix on every name.
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt[key].items()}
    try:
        model = DualEncoder(ModelConfig(**ckpt["config"]["model"]))
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:  # written by another version of model.py
        raise InputError(f"{ckpt_path}: weights do not fit model.py's DualEncoder: {first_line(e)}")
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed file
        raise InputError(f"cannot read tokenizer {tokenizer_path}: {first_line(e)}")
    if tokenizer.get_vocab_size() != model.cfg.vocab_size:   # its ids would index other rows
        raise InputError(f"{tokenizer_path} has {tokenizer.get_vocab_size()} tokens, the model in "
                         f"{ckpt_path} {model.cfg.vocab_size}: it is another run's tokenizer")
    return model.to(device).eval(), tokenizer, ckpt


# -----------------------------------------------------------------------------
# Resuming.

def read_for_resume(ckpt_path, args):
    """The checkpoint --resume continues, after every check that needs no data: it is a readable
    train.py checkpoint of this layout, and its training settings equal this command's (options in
    RESUME_MAY_CHANGE excepted; --queue-size auto is compared once the data sizes it). Raises
    InputError naming what differs."""
    ckpt = read_checkpoint(ckpt_path, "delete it to start the run again from step 0, or use "
                                      "another --out")
    needed = {"student", "optimizer", "step", "rng", "config"}
    if not (isinstance(ckpt, dict) and needed <= ckpt.keys()
            and isinstance(ckpt["config"], dict) and "train" in ckpt["config"]):
        raise InputError(f"{ckpt_path} is not a train.py checkpoint (no training settings or "
                         f"weights in it): delete it, or use another --out")
    if ckpt["config"].get("format") != FORMAT:
        raise InputError(f"{ckpt_path} was written by another version of train.py (checkpoint "
                         f"format {ckpt['config'].get('format')}, this one {FORMAT}), whose options "
                         f"did not all mean what they mean here: it cannot be resumed (eval.py still "
                         f"evaluates it); train again in another --out")
    saved = ckpt["config"]["train"]
    changed = {k: (saved.get(k), v) for k, v in vars(args).items()
               if k not in RESUME_MAY_CHANGE and saved.get(k) != v
               and not (k == "queue_size" and v is None)}
    if changed:
        raise InputError("different settings than the checkpoint: " + ", ".join(
            f"--{k.replace('_', '-')} {old} (saved) vs {new}" for k, (old, new) in changed.items()))
    return ckpt


def restore(ckpt, *, student, teacher, queue, optimizer, scaler, rank, device):
    """Load a checkpoint's state into freshly built objects and this rank's random state; returns
    the step to continue from."""
    student.load_state_dict(ckpt["student"])
    if teacher is not None:
        teacher.load_state_dict(ckpt["teacher"])
        queue.load_state_dict(ckpt["queue"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"][rank])
    if device.type == "cuda" and ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rank], device)
    return ckpt["step"]
