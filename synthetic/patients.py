"""
A patient and the details of each of its findings: the random parameters one study's picture (and
report) is drawn from.

A patient is anatomy and acquisition, sampled independently of the findings, so that a test (or a
curious reader) can draw the very same patient with and without a finding. A finding's details say
where it is and how much: "side" ("right"/"left"/"bilateral"/None), "severity"
("small"/"moderate"/"large"/None), "hedged" (the report voices uncertainty), and a few drawing
parameters (positions, jitter) that radiograph.py reads. Which findings a study has is
dataset.py's (sample_findings), as is the generator both functions here draw from.
"""

import math
from dataclasses import dataclass


@dataclass
class Patient:
    x0: float              # horizontal shift of the whole chest (patient positioning)
    y0: float              # vertical shift
    width: float           # body habitus: scales thorax width
    lung_top: float        # apex height
    lung_w_right: float    # lung half-widths (before the width scale)
    lung_w_left: float
    diaphragm_right: float  # dome heights; the right hemidiaphragm usually sits a little higher
    diaphragm_left: float
    dome: float            # how curved the domes are (sets the costophrenic angles)
    heart_w: float         # heart half-width; cardiothoracic ratio ~0.4 when normal
    heart_h: float
    heart_x: float         # the heart sits left of the midline (image right)
    mediastinum_w: float
    rib_spacing: float
    rib_phase: float
    rib_curve: float
    vessel_freq: float     # density of vessel branches radiating from the hila
    vessel_phase: float
    brightness: float      # exposure / windowing
    contrast: float
    gamma: float
    noise: float           # quantum noise level
    noise_seed: int        # the noise is part of the patient's acquisition, not of the finding


def sample_patient(rng):
    U = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    dia = U(0.30, 0.42)
    return Patient(
        x0=U(-0.06, 0.06), y0=U(-0.05, 0.05), width=U(0.90, 1.05),
        lung_top=U(-0.78, -0.70), lung_w_right=U(0.32, 0.36), lung_w_left=U(0.30, 0.34),
        diaphragm_right=dia - U(0.0, 0.06), diaphragm_left=dia, dome=U(0.08, 0.14),
        heart_w=U(0.27, 0.32), heart_h=U(0.19, 0.23), heart_x=U(0.08, 0.13),
        mediastinum_w=U(0.09, 0.12),
        rib_spacing=U(0.15, 0.19), rib_phase=U(0, 2 * math.pi), rib_curve=U(0.25, 0.45),
        vessel_freq=float(rng.integers(9, 14)), vessel_phase=U(0, 2 * math.pi),
        brightness=U(-0.03, 0.03), contrast=U(1.25, 1.4), gamma=U(0.9, 1.1),
        noise=U(0.005, 0.02), noise_seed=int(rng.integers(2**31)),
    )


# -----------------------------------------------------------------------------
# A finding's details

SEVERITIES = ["small", "moderate", "large"]
SIDES = {  # where each finding can be, with probabilities
    "pleural effusion": (["right", "left", "bilateral"], [0.40, 0.30, 0.30]),
    "pneumothorax": (["right", "left"], [0.5, 0.5]),
    "consolidation": (["right", "left", "bilateral"], [0.45, 0.40, 0.15]),
    "atelectasis": (["right", "left", "bilateral"], [0.35, 0.40, 0.25]),
    "nodule": (["right", "left"], [0.5, 0.5]),
}
DEVICES = ["endotracheal tube", "central venous catheter", "enteric tube", "pacemaker"]


def sample_finding(rng, name):
    """The details of finding `name` (one of dataset.FINDINGS): a dict as this module's docstring says."""
    U = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    f = {"side": None, "severity": None, "hedged": False}
    if name in SIDES:
        names, p = SIDES[name]
        f["side"] = str(rng.choice(names, p=p))
    if name == "edema":
        f["side"] = "bilateral"  # edema is a whole-lung process
    if name != "support device":
        f["severity"] = str(rng.choice(SEVERITIES, p=[0.4, 0.35, 0.25]))
        # weak findings are where radiologists hedge ("possible", "cannot exclude")
        f["hedged"] = bool(f["severity"] == "small" and rng.random() < 0.35)
    f["jitter"] = U(0.85, 1.15)  # size variation within a severity grade
    if name in ("consolidation", "nodule"):
        f["zone"] = str(rng.choice(["upper", "middle", "lower"]))
        f["x"] = U(0.0, 0.5)  # position across the lung, 0 = centre, 1 = lateral edge
    if name == "consolidation":
        # a patchy opacity: a cluster of overlapping blobs around the lobe's centre
        f["blobs"] = [[U(-1, 1), U(-1, 1)] for _ in range({"small": 4, "moderate": 6, "large": 8}[f["severity"]])]
    if name == "nodule":
        lo, hi = {"small": (4, 8), "moderate": (10, 25), "large": (35, 60)}[f["severity"]]
        f["size_mm"] = int(rng.integers(lo, hi + 1))
    if name == "atelectasis":
        f["band_y"], f["tilt"] = U(0.0, 0.08), U(-0.06, 0.06)
    if name == "support device":
        f["device"] = str(rng.choice(DEVICES))
        if f["device"] == "central venous catheter":
            f["side"] = str(rng.choice(["right", "left"], p=[0.7, 0.3]))
        if f["device"] == "pacemaker":
            f["side"] = str(rng.choice(["right", "left"], p=[0.2, 0.8]))
        f["tip_cm"] = int(rng.integers(3, 7))
    return f
