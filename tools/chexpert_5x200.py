"""
CheXpert 5x200 (Irvin et al. 2019; the zero-shot protocol of GLoRIA, Huang et al. 2021, and
MedCLIP, Wang et al. 2022) -> a classification manifest and its prompt file: 200 frontal images
for each of five findings, each image positive for exactly that one of the five, classified by
comparing it with each class's prompts. Run it as `python -m tools.convert chexpert-5x200 ...`.
"""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from manifests.read import ManifestError
from tools.tables import iter_table, label_value, relative_to_csv, where, write_csv

FIVE = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

# A few sentences per class, written the way report findings are phrased (the text encoder learnt
# from reports), with different severities, sides and wordings; a class is the mean of their
# embeddings (prompt ensembling, CLIP, Radford et al. 2021).
PROMPTS_5X200 = {
    "atelectasis": [
        "Atelectasis.",
        "Mild bibasilar atelectasis.",
        "Streaky opacity at the left base, likely subsegmental atelectasis.",
        "Linear atelectasis in the right lower lung.",
        "Volume loss with atelectasis of the lower lobe.",
    ],
    "cardiomegaly": [
        "Cardiomegaly.",
        "The cardiac silhouette is enlarged.",
        "Moderate cardiomegaly.",
        "Heart size is enlarged.",
        "Mild enlargement of the cardiac silhouette.",
    ],
    "consolidation": [
        "Consolidation.",
        "Focal consolidation in the right lower lobe.",
        "Dense airspace consolidation with air bronchograms.",
        "Patchy consolidation at the left lung base.",
        "Lobar consolidation in the upper lobe.",
    ],
    "edema": [
        "Pulmonary edema.",
        "Mild interstitial edema.",
        "Pulmonary vascular congestion with interstitial edema.",
        "Diffuse bilateral airspace opacities consistent with pulmonary edema.",
        "Moderate pulmonary edema with cephalization of the vessels.",
    ],
    "pleural effusion": [
        "Pleural effusion.",
        "Small left pleural effusion.",
        "Moderate right pleural effusion.",
        "Bilateral pleural effusions, larger on the right.",
        "Blunting of the costophrenic angle from a small effusion.",
    ],
}


def sample_rank(seed, path):
    """The sampling order: a hash of (seed, image path). Taking the n lowest ranks is a uniform
    random sample that depends only on the seed and the paths, not on the CSV's row order or on
    any library's random generator (whose streams may change between versions)."""
    return hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest()


def read_5x200_candidates(csv_path, seed):
    """CheXpert's CSV -> ({class: [(rank, row, line, path)]}, number of frontal images): the
    frontal images positive (1.0) for one of the five classes and for none of the other four, none
    of them uncertain (-1.0) either, so that the true class is not in doubt."""
    candidates = {name: [] for name in FIVE}
    frontal = 0
    for row_no, line, row in iter_table(csv_path, ["Path", "Frontal/Lateral"] + FIVE):
        if not row["Path"]:
            raise ManifestError(f"{where(csv_path, row_no, line, 'Path')}: empty path")
        values = [label_value(row[name], where(csv_path, row_no, line, name)) for name in FIVE]
        if row["Frontal/Lateral"] != "Frontal":
            continue
        frontal += 1
        if values.count(1) == 1 and -1 not in values:
            candidates[FIVE[values.index(1)]].append((sample_rank(seed, row["Path"]), row_no, line, row["Path"]))
    return candidates, frontal


def sample_5x200(csv_path, candidates, per_class, found):
    """The per_class lowest-ranked candidates of each class, as [(class, row, line, path)] sorted
    by class and then row; a class with fewer candidates is an error naming the counts (found)."""
    short = [name.lower() for name, c in candidates.items() if len(c) < per_class]
    if short:
        raise ManifestError(f"{csv_path}: too few frontal images positive for one class alone for "
                            f"--per-class {per_class}: {short} (found: {found})")
    chosen = []
    for name, c in candidates.items():
        chosen += sorted((name.lower(), row_no, line, path) for _, row_no, line, path in sorted(c)[:per_class])
    return chosen


def check_5x200_images(csv_path, images_root, chosen):
    """Every sampled image must be there: a missing one is an error, not silently replaced."""
    missing = [(row_no, line, path) for _, row_no, line, path in chosen if not (images_root / path).is_file()]
    if missing:
        row_no, line, path = missing[0]
        raise ManifestError(f"{where(csv_path, row_no, line, 'Path')}: image not found: {images_root / path} "
                            f"({len(missing)} of the {len(chosen)} sampled images are missing; --images "
                            f"names the folder the Path column is relative to)")


def write_prompts(prompts_json):
    """PROMPTS_5X200 -> prompts_json, through a temporary file renamed at the end."""
    tmp = prompts_json.with_name(prompts_json.name + ".tmp")
    tmp.write_text(json.dumps(PROMPTS_5X200, indent=2) + "\n")
    os.replace(tmp, prompts_json)


def convert_chexpert_5x200(csv_path, out_csv, prompts_json=None, images_root=None, per_class=200, seed=0):
    """CheXpert's train.csv (or valid.csv) -> a classification manifest (image, label) of
    per_class frontal images per class, each positive (1.0) for its class and for none of the other
    four, none of them uncertain (-1.0) either, so its true class is not in doubt; plus the prompt
    file. Path values are relative to images_root (default: the CSV's folder's parent, as
    distributed: "CheXpert-v1.0-small/train/patient00001/..."). Returns {class: rows written}."""
    csv_path, out_csv = Path(csv_path), Path(out_csv)
    images_root = Path(images_root) if images_root else csv_path.resolve().parent.parent
    prompts_json = Path(prompts_json) if prompts_json else out_csv.with_name(out_csv.stem + "_prompts.json")
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {per_class}")
    candidates, frontal = read_5x200_candidates(csv_path, seed)
    found = ", ".join(f"{name.lower()} {len(c)}" for name, c in candidates.items())
    chosen = sample_5x200(csv_path, candidates, per_class, found)
    check_5x200_images(csv_path, images_root, chosen)
    rel_root = relative_to_csv(images_root, out_csv)
    write_csv(out_csv, ["image", "label"],
              ([os.path.normpath(os.path.join(rel_root, path)), name] for name, _, _, path in chosen))
    write_prompts(prompts_json)
    print(f"chexpert-5x200: {frontal} frontal images in {csv_path}, positive for one of the five "
          f"alone: {found}; wrote {per_class} per class (seed {seed}) to {out_csv} and the prompts "
          f"to {prompts_json}")
    return Counter(name for name, *_ in chosen)
