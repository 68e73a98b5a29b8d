"""The momentum (EMA) teacher: a slowly moving average of the student.

MoCo (He et al. 2020) keeps a "key encoder" whose weights trail the trained encoder,

    θ' ← m θ' + (1 − m) θ        (θ' teacher, θ student, m close to 1, e.g. 0.995)

so the features it produces change slowly and stay consistent with the ones already in the
queue. ALBEF (Li et al. 2021) uses the same average as a teacher whose soft predictions are
distilled into the student. The teacher is never trained by gradients: only this update moves it.

MoCo v3 raises m from its base value to 1 along a half cosine, so the teacher moves quickly
while the student changes fast and freezes towards the end.

How far the teacher trails is best read as a half-life: after h steps of EMA a weight's old value
counts for m^h, so m = 0.5^(1/h). The usual m = 0.995 is a half-life of 138 steps: a quarter of a
600-step run, a trifle of a 100,000-step one. In a short run that lag matters: the teacher's
features are the student's targets, and early on they are mostly those of the random
initialisation; train.py's 500-step default uses 0.98 (34 steps). `momentum_for_half_life` picks
m from a half-life given as a fraction of the run, so the teacher's lag scales with the run
instead of being fixed.

Depends on torch and the standard library only.
"""

import copy
import math

import torch
import torch.nn as nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student that never receives gradients (requires_grad False everywhere)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """θ' ← m θ' + (1 − m) θ, in place, for every parameter and floating-point buffer.

    Buffers that are not floating point (e.g. BatchNorm's `num_batches_tracked`, integer step
    counters) cannot be averaged and are copied. The update works on the tensors' storage so any
    optimizer or view that holds the teacher's tensors sees the new values.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    # lerp_(θ, w) computes θ' + w (θ − θ') = (1 − w) θ' + w θ, so w = 1 − m.
    for t, s in zip(t_params, s_params):
        t.lerp_(s.detach(), 1.0 - m)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.is_floating_point():
            t.lerp_(s, 1.0 - m)
        else:
            t.copy_(s)


def momentum_for_half_life(fraction: float, total_steps: int) -> float:
    """The m whose EMA halves an old weight's share in `fraction` of `total_steps` optimizer steps:
    m = 0.5^(1 / (fraction · total_steps)). E.g. 0.05 of 600 steps: a 30-step half-life, m ≈ 0.977."""
    if not (fraction > 0 and total_steps > 0):
        raise ValueError(f"half-life fraction and total steps must be positive, got {fraction}, {total_steps}")
    return 0.5 ** (1.0 / (fraction * total_steps))


def momentum_at(step: int, total_steps: int, base: float, schedule: str = "constant") -> float:
    """The momentum for optimizer step `step` (0-based) of `total_steps`. `base` has no default: the
    value that suits a run depends on its length (train.py's --momentum, 0.98 for 500 steps).

    constant: m = base.
    cosine (MoCo v3): m = 1 − (1 − base) · (cos(π · step / total_steps) + 1) / 2, which is `base`
    at step 0 and rises monotonically to 1 at step == total_steps.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        progress = min(max(step / total_steps, 0.0), 1.0)
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule {schedule!r}; choose 'constant' or 'cosine'")
