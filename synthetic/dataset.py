"""
A procedural data set of chest radiographs and their reports, so `python train.py` works with no
download.

Frontal chest radiograph-like images (body, lungs, heart, mediastinum, diaphragm, ribs, vessels)
with 8 findings drawn with their real visual signs, and a radiology-style report for each, written
from many paraphrases. Every item is a pure function of (seed, index): nothing is stored, any item
can be regenerated, and training and evaluation use disjoint seeds. From it: a training set (its
reports optionally noisy, train.py --report-noise), a CheXpert 5x200-style zero-shot set and a
retrieval set, and an export as PNGs plus a manifest that data.py reads like any real data set.

In the order a reader meets them: the vocabulary (findings, zero-shot classes and prompts, seeds),
which findings a study has, studies (a patient and its findings' details from patients.py, the
picture from radiograph.py, the report from reports.py), noisy reports, the data sets and the
grounding set, then the export.

Run `python data.py show --out samples.png` to look at what the model sees: a grid of training
studies, each with its findings and the start of its report (drawn by plot.py). From Python,
`synthetic.make_study(synthetic.TRAIN_SEED, i)` gives one study (image, report, labels, findings).
"""

import csv
import math
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from plumbing.runtime import WriteError, reason, save_atomic, worker_signals
from synthetic.patients import Patient, sample_finding, sample_patient
from synthetic.radiograph import render_image, render_with_masks
from synthetic.reports import finding_sentence, write_report

# -----------------------------------------------------------------------------
# Vocabulary of the data set

# Multi-label targets, in this order (labels[:, i] is FINDINGS[i]).
FINDINGS = ["cardiomegaly", "pleural effusion", "pneumothorax", "consolidation", "atelectasis",
            "edema", "nodule", "support device"]

# The CheXpert 5x200 zero-shot protocol (MedCLIP, GLoRIA): 5 findings, single-finding images.
ZERO_SHOT_CLASSES = ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion"]

# A prompt ensemble per class. Written like the positive sentences of a report (the text encoder
# only ever saw reports), with sides and severities as reports give them, but none is a copy of a
# generated sentence: zero-shot should test whether the model learnt the *concept*, not whether it
# memorised a template. They also avoid the wording of negations ("No focal consolidation."),
# which a small text encoder can hardly tell from "There is focal consolidation.".
CLASS_PROMPTS = {
    "atelectasis": [
        "Atelectasis at the left lung base.",
        "Right basilar atelectasis with volume loss.",
        "Plate-like atelectasis in the lower lobe.",
        "Bibasilar atelectasis is present.",
        "Linear atelectasis at the lung bases.",
    ],
    "cardiomegaly": [
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "Moderate enlargement of the cardiac silhouette consistent with cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "The heart appears enlarged.",
    ],
    "consolidation": [
        "Consolidation in the right lower lobe concerning for pneumonia.",
        "Airspace consolidation in the left upper lobe.",
        "Dense lobar consolidation.",
        "Patchy airspace opacity consistent with pneumonia.",
        "Consolidation of the lung.",
    ],
    "edema": [
        "Pulmonary edema is present.",
        "Moderate interstitial pulmonary edema.",
        "Perihilar haziness and Kerley B lines consistent with pulmonary edema.",
        "Bilateral interstitial edema with vascular congestion.",
        "Mild pulmonary edema with vascular congestion.",
    ],
    "pleural effusion": [
        "Right pleural effusion is present.",
        "Moderate left pleural effusion with blunting of the costophrenic angle.",
        "Pleural effusions on both sides.",
        "Fluid in the pleural space at the lung base.",
        "Blunting of the costophrenic angle due to pleural effusion.",
    ],
}

# Every item's random generator is np.random.default_rng([split seed, stream, index]). Two
# different triples give independent streams, so a training item can never be an evaluation item.
# (Always three words: numpy's SeedSequence pads short entropy with zeros, so [a, b] and
# [a, b, 0] would be the *same* stream.)
TRAIN_SEED = 1001
EVAL_SEED = 2002
# A second, disjoint evaluation set (eval.py --eval-seed 3003): a recipe tuned until it wins on
# EVAL_SEED's 1000 images must still win here before we believe it.
SECOND_EVAL_SEED = 3003

# Bump when the pictures or reports change, so cached renders (load_or_render) are not reused.
GENERATOR_VERSION = 2


# -----------------------------------------------------------------------------
# Findings: which a study has. A findings dict maps a finding name to its details (where and how
# much: patients.sample_finding).

P_NORMAL = 0.35            # share of studies with no finding
FINDINGS_PER_STUDY = ([1, 2, 3], [0.65, 0.27, 0.08])  # for abnormal studies
FINDING_WEIGHTS = [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.6]  # relative frequency, FINDINGS order


def sample_findings(rng, only=None):
    """only=None: a training-like mix (0-3 findings). only=name: exactly that one finding."""
    if only == "none":
        return {}
    if only is not None:
        if only not in FINDINGS:
            raise ValueError(f"unknown finding {only!r}; known: {FINDINGS}")
        return {only: sample_finding(rng, only)}
    if rng.random() < P_NORMAL:
        return {}
    k = int(rng.choice(FINDINGS_PER_STUDY[0], p=FINDINGS_PER_STUDY[1]))
    w = np.array(FINDING_WEIGHTS)
    picked = sorted(rng.choice(len(FINDINGS), size=k, replace=False, p=w / w.sum()))
    return {FINDINGS[i]: sample_finding(rng, FINDINGS[i]) for i in picked}


# -----------------------------------------------------------------------------
# Studies and data sets


@dataclass
class Study:
    image: np.ndarray   # (H, W) float32 in [0, 1]
    report: str         # "FINDINGS: ... IMPRESSION: ..."
    labels: np.ndarray  # (len(FINDINGS),) float32 multi-hot
    findings: dict      # name -> {"side", "severity", "hedged", drawing parameters}
    patient: Patient = field(default=None, repr=False)  # to redraw this patient with other findings


def draw_study(seed, index, only=None):
    """The random part of study `index`, no picture: (rng, patient, findings), rng left where the
    report starts drawing (write_report(findings, rng) is the study's report)."""
    stream = 0 if only is None else 1 + (FINDINGS.index(only) if only in FINDINGS else len(FINDINGS))
    rng = np.random.default_rng([seed, stream, index])
    patient = sample_patient(rng)
    findings = sample_findings(rng, only)
    return rng, patient, findings


def findings_labels(findings):
    """(len(FINDINGS),) float32 multi-hot of a findings dict."""
    return np.array([name in findings for name in FINDINGS], dtype=np.float32)


def make_study(seed, index, image_size=64, only=None):
    """Study number `index` of the split with this seed; `only` forces a single finding."""
    rng, patient, findings = draw_study(seed, index, only)
    report = write_report(findings, rng)
    return Study(render_image(patient, findings, image_size), report, findings_labels(findings),
                 findings, patient)


def to_uint8(image):
    """float array in [0, 1] -> uint8 (rounded), as images are stored and as manifests load."""
    return (image * 255 + 0.5).astype(np.uint8)


def _render_one(job):
    seed, index, image_size, only = job
    s = make_study(seed, index, image_size, only)
    return to_uint8(s.image), s.report, s.labels


def _render_many(jobs, image_size, workers):
    """Render (seed, index, only) jobs, in order; a process pool when workers > 1."""
    jobs = [(seed, index, image_size, only) for seed, index, only in jobs]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) >= 256:  # below that, starting processes costs more than it saves
        with multiprocessing.get_context().Pool(workers, initializer=worker_signals) as pool:
            out = pool.map(_render_one, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
    else:
        out = [_render_one(job) for job in jobs]
    images = torch.from_numpy(np.stack([o[0] for o in out]))[:, None]  # (n, 1, H, W) uint8
    return images, [o[1] for o in out], torch.from_numpy(np.stack([o[2] for o in out]))


# -----------------------------------------------------------------------------
# Noisy training reports (train.py --report-noise P), as real report-image pairs have them:
# radiologists leave findings unsaid (under-reporting: an abnormal image can get a normal report)
# and reports get filed under the wrong study (a mismatched pair). With probability P each finding
# the image shows is left out of its report, and with probability P/2 the pair carries the report
# of another training study instead of its own. Only training sets get noise; evaluation and
# retrieval sets never do.
#
# The noise has a stream of its own, [seed, NOISE_STREAM, index], that no study draws from, so the
# pictures, findings, labels and every unchanged report are the clean set's to the byte, and P = 0
# is the clean set. Its draws do not depend on P (a uniform u per finding, one u_swap and one for
# the partner per study; a finding is left out when u < P, the report swapped when u_swap < P / 2),
# so the noise is monotone in P: what is left out or swapped at P = 0.1 is so at 0.3 too, with the
# same partner.

NOISE_STREAM = 1000  # the studies' streams are 0 (training mix) and 1..9 (`only`)


def check_report_noise(p):
    """p as a float, or ValueError when it is not a probability (nan and inf included)."""
    try:
        q = float(p)
    except (TypeError, ValueError):
        q = math.nan
    if not 0 <= q <= 1:
        raise ValueError(f"report noise must be a probability in [0, 1], got {p!r}")
    return q


def noise_draws(seed, index, n):
    """Study `index`'s noise draws in a set of n: (u (len(FINDINGS),) uniforms in FINDINGS order,
    u_swap, partner). The partner is the study whose report a swap gives it: uniform over the n - 1
    others (-1 when n == 1: nobody to swap with), so it depends on n (the set's size) too."""
    rng = np.random.default_rng([seed, NOISE_STREAM, index])
    u = rng.random(len(FINDINGS))
    u_swap, u_partner = float(rng.random()), float(rng.random())
    if n < 2:
        return u, u_swap, -1
    k = min(int(u_partner * (n - 1)), n - 2)
    return u, u_swap, k + (k >= index)


def written_report(seed, index, omit=()):
    """The report written for training study `index` with the findings named in `omit` left out:
    from the same generator state as make_study's, so with nothing left out it is that study's
    report to the byte, and with every finding left out a normal study's report."""
    rng, _, findings = draw_study(seed, index)
    return write_report({k: v for k, v in findings.items() if k not in omit}, rng)


def apply_report_noise(seed, texts, labels, p):
    """Training items 0..n-1's clean reports and their labels (n, F) -> (noisy texts, noise) with
    noise = {"p": p, "omitted": bool (n, F), "swapped_from": long (n,)}.

    omitted[i, f]: finding f is in image i and was left out of the report written for study i.
    swapped_from[i] = j >= 0: the pair carries study j's written report (j's own omissions
    applied, never j's swap) instead of i's; -1: its own. The labels are not changed: they stay
    the image's true findings (what evaluation and diagnostics compare with). A swap between two
    normal studies with the same template report leaves the text as it was, but is still counted."""
    p = check_report_noise(p)
    n = len(texts)
    draws = [noise_draws(seed, i, n) for i in range(n)]
    u = torch.from_numpy(np.stack([d[0] for d in draws])) if n else torch.zeros(0, len(FINDINGS))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float32)).reshape(n, len(FINDINGS))
    omitted = (labels > 0) & (u < p)
    swapped_from = torch.tensor([d[2] if d[1] < p / 2 else -1 for d in draws], dtype=torch.long)
    written = list(texts)
    for i in torch.nonzero(omitted.any(1)).flatten().tolist():
        written[i] = written_report(seed, i, {FINDINGS[f] for f in torch.nonzero(omitted[i]).flatten().tolist()})
    noisy = [written[j] if j >= 0 else written[i] for i, j in enumerate(swapped_from.tolist())]
    return noisy, {"p": p, "omitted": omitted, "swapped_from": swapped_from}


def changed_reports(noise):
    """(n,) bool: the pairs whose report the noise changed (a finding left out, or swapped)."""
    return noise["omitted"].any(1) | (noise["swapped_from"] >= 0)


def training_reports(n, report_noise=0.0, seed=TRAIN_SEED):
    """The texts and labels (and the noise, when report_noise > 0) of render_synthetic("train", n,
    ..., report_noise=...) without drawing a single picture: fast enough for 20,000 reports."""
    texts, labels = [], []
    for i in range(n):
        rng, _, findings = draw_study(seed, i)
        texts.append(write_report(findings, rng))
        labels.append(findings_labels(findings))
    out = {"texts": texts, "labels": torch.from_numpy(np.stack(labels)) if n else torch.zeros(0, len(FINDINGS))}
    if check_report_noise(report_noise) > 0:
        out["texts"], out["noise"] = apply_report_noise(seed, texts, out["labels"], report_noise)
    return out


SPLIT_SEEDS = {"train": TRAIN_SEED, "retrieval": EVAL_SEED}


def check_eval_seed(seed):
    if seed == TRAIN_SEED:
        raise ValueError(f"evaluation seed {seed} is the training set's seed (TRAIN_SEED): its "
                         f"images are the ones the model trained on; choose another")


def render_synthetic(split, n, image_size, workers=0, seed=None, report_noise=0.0):
    """Items 0..n-1 of a split: {"images": uint8 (n, 1, H, W), "texts": [str], "labels": float (n, F)}.
    The same for any number of workers: each item depends on (split seed, index) only. seed
    replaces the split's own (SPLIT_SEEDS) for another, disjoint evaluation set.

    report_noise P > 0 (training only): noisy reports (apply_report_noise), and a "noise" entry
    saying which were changed; the labels stay the images' true findings. P = 0 is exactly the
    clean set, without the entry."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {list(SPLIT_SEEDS)}, got {split!r}")
    report_noise = check_report_noise(report_noise)
    if report_noise > 0 and split != "train":
        raise ValueError(f"report noise is for the training set only, not {split!r}")
    if seed is not None and split != "train":
        check_eval_seed(seed)
    seed = SPLIT_SEEDS[split] if seed is None else seed
    images, texts, labels = _render_many([(seed, i, None) for i in range(n)], image_size, workers)
    out = {"images": images, "texts": texts, "labels": labels}
    if report_noise > 0:
        out["texts"], out["noise"] = apply_report_noise(seed, texts, labels, report_noise)
    return out


def retrieval_set(n, image_size, workers=0, seed=EVAL_SEED):
    """Held-out image-report pairs (an evaluation seed) for image <-> text Recall@k."""
    return render_synthetic("retrieval", n, image_size, workers, seed)


def zero_shot_set(n_per_class, image_size, workers=0, seed=EVAL_SEED):
    """CheXpert 5x200 style: n_per_class single-finding images of each ZERO_SHOT_CLASSES entry."""
    check_eval_seed(seed)
    jobs = [(seed, i, c) for c in ZERO_SHOT_CLASSES for i in range(n_per_class)]
    images, texts, _ = _render_many(jobs, image_size, workers)
    labels = torch.arange(len(ZERO_SHOT_CLASSES)).repeat_interleave(n_per_class)  # (5n,) long
    return {"images": images, "labels": labels, "classes": list(ZERO_SHOT_CLASSES),
            "prompts": {c: list(p) for c, p in CLASS_PROMPTS.items()}, "texts": texts}


GROUNDING_SEED = 4004   # disjoint from the training and both evaluation sets
# The localised findings the grounding set draws (radiograph.NO_PLACE findings, edema, have no
# region to point at).
GROUNDING_CLASSES = ["atelectasis", "consolidation", "nodule", "pleural effusion", "pneumothorax"]


# The grounding sentences say where the finding is ("left lower lobe nodule"), so a map that reads
# only the sentence can point well without looking (evaluation.grounding.text_prior). The second
# sentence of every grounding study names its finding and nothing of its place.
UNLOCATED_SENTENCES = {"atelectasis": "Atelectasis.", "consolidation": "Airspace consolidation.",
                       "nodule": "A pulmonary nodule.", "pleural effusion": "Pleural effusion.",
                       "pneumothorax": "Pneumothorax."}


def grounding_set(n_per_class, image_size, seed=GROUNDING_SEED):
    """Phrase grounding on synthetic studies: n_per_class single-finding studies of each of
    GROUNDING_CLASSES, each with the mask of its finding (radiograph.render_with_masks) and two
    sentences: the report's, which names the finding and its place, and one that names the finding
    alone (UNLOCATED_SENTENCES). Returns {"images": uint8 (n, 1, H, W), "masks": bool (n, H, W),
    "texts": [the report's sentence], "unlocated": [the finding alone], "labels": [class name],
    "places": [(class, side, zone) or (class, side): what the report's sentence says of the
    place], "seed"}."""
    check_eval_seed(seed)
    images, masks, texts, labels, places = [], [], [], [], []
    for name in GROUNDING_CLASSES:
        for i in range(n_per_class):
            rng, patient, findings = draw_study(seed, i, only=name)
            image, found = render_with_masks(patient, findings, image_size)
            images.append(to_uint8(image))
            masks.append(found[name])
            texts.append(finding_sentence(write_report(findings, rng)))
            labels.append(name)
            f = findings[name]
            places.append((name, f["side"]) + ((f["zone"],) if "zone" in f else ()))
    return {"images": torch.from_numpy(np.stack(images))[:, None], "masks":
            torch.from_numpy(np.stack(masks)), "texts": texts, "labels": labels, "places": places,
            "unlocated": [UNLOCATED_SENTENCES[name] for name in labels], "seed": seed}


def cache_file_name(split, n, image_size, report_noise=0.0):
    """load_or_render's file name: the split, n, the size and GENERATOR_VERSION, then the report
    noise when there is any (report_noise=0 names the same file as no report noise)."""
    noise = f"-noise{float(report_noise)!r}" if report_noise > 0 else ""
    return f"{split}-n{n}-s{image_size}-v{GENERATOR_VERSION}{noise}.pt"


def load_or_render(split, n, image_size, cache_dir=None, workers=0, report_noise=0.0):
    """render_synthetic / zero_shot_set (split "zero_shot", n per class), cached as a .pt in
    cache_dir. (The grounding set is not cached on disk: it renders in about a second, and its
    masks and sentences change more often than the pictures that GENERATOR_VERSION names.)
    Rendering is cheap but not free (20k images at 64 px: several seconds per core); a cache makes
    restarts and repeated runs instant. The key holds GENERATOR_VERSION so a changed generator
    never serves stale pictures, and the report noise (training only) so a noisy set is never
    served for a clean one."""
    report_noise = check_report_noise(report_noise)
    if report_noise > 0 and split != "train":
        raise ValueError(f"report noise is for the training set only, not {split!r}")
    def render():
        if split == "zero_shot":
            return zero_shot_set(n, image_size, workers)
        return render_synthetic(split, n, image_size, workers, report_noise=report_noise)
    if cache_dir is None:
        return render()
    path = Path(cache_dir) / cache_file_name(split, n, image_size, report_noise)
    if path.exists():
        try:
            data = torch.load(path, weights_only=True)
            if split == "zero_shot":  # prompts are code, not data: always the current CLASS_PROMPTS
                data["classes"], data["prompts"] = list(ZERO_SHOT_CLASSES), {c: list(p) for c, p in CLASS_PROMPTS.items()}
            return data
        except Exception as e:  # a truncated file from a killed run: render again
            print(f"data: cache {path} unreadable ({e}); rendering again", file=sys.stderr)
    data = render()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create the data cache {path.parent}: {reason(e)}; "
                         f"choose another --data-cache, or --data-cache '' to keep it in memory") from None
    # atomic: a concurrent reader (another DDP rank) never sees half a file; a full disk is one line
    try:
        save_atomic(data, path, tmp=path.with_name(f"{path.name}.{os.getpid()}.tmp"))
    except WriteError as e:
        raise WriteError(f"{e}; nothing else was written: free space, or --data-cache '' to keep "
                         f"the data in memory") from None
    return data


# -----------------------------------------------------------------------------
# Exporting the data set (plot.py draws a grid of it: python data.py show)


def export_synthetic(out_dir, n, image_size=64, report_noise=0.0):
    """Write training items 0..n-1 as PNGs plus out_dir/manifest.csv; returns the manifest's path.
    With report_noise, the texts are the noisy reports and the labels the images' true findings."""
    out_dir = Path(out_dir)
    report_noise = check_report_noise(report_noise)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    data = render_synthetic("train", n, image_size, report_noise=report_noise)
    csv_path = out_dir / "manifest.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "labels", "split"])
        for i in range(n):
            rel = f"images/{i:06d}.png"
            Image.fromarray(data["images"][i, 0].numpy(), "L").save(out_dir / rel)
            names = [FINDINGS[j] for j in range(len(FINDINGS)) if data["labels"][i, j] > 0]
            w.writerow([rel, data["texts"][i], ";".join(names), "train"])
    return csv_path
