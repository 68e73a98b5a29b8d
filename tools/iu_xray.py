"""
IU X-Ray (Open-I, Demner-Fushman et al. 2016) -> a pair manifest: ~3,800 reports, each with a
frontal and a lateral image, as distributed on Kaggle (indiana_reports.csv,
indiana_projections.csv). Run it as `python -m tools.convert iu-xray ...`.
"""

import csv
from pathlib import Path

from manifests.read import ManifestError
from tools.tables import iter_table, relative_to_csv


def read_iu_reports(reports_csv):
    """indiana_reports.csv -> {uid: "FINDINGS: ... IMPRESSION: ..."}, with the sections a report
    has ("" with neither)."""
    reports = {}
    for _, _, row in iter_table(reports_csv, ["uid", "findings", "impression"]):
        parts = [f"{name.upper()}: {row[name]}" for name in ("findings", "impression") if row[name]]
        reports[row["uid"]] = " ".join(parts)
    return reports


def convert_iu_xray(reports_csv, projections_csv, images_dir, out_csv):
    """IU X-Ray (Open-I) -> a pair manifest of its frontal images. indiana_reports.csv has uid,
    findings, impression (and MeSH, Problems, ...); indiana_projections.csv has uid, filename,
    projection ("Frontal" / "Lateral"). Text = "FINDINGS: ... IMPRESSION: ...". Reports with
    neither section, and images not found, are skipped and counted aloud.
    Returns the number of rows written."""
    out_csv, images_dir = Path(out_csv), Path(images_dir)
    reports = read_iu_reports(reports_csv)
    projections = [row for _, _, row in iter_table(projections_csv, ["uid", "filename", "projection"])]
    if not images_dir.is_dir():
        raise ManifestError(f"{images_dir}: images folder not found")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    written, no_report, no_image = 0, 0, 0
    empty = {uid for uid, text in reports.items() if not text}
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        for row in projections:
            if row["projection"].lower() != "frontal":
                continue
            uid = row["uid"]
            if uid not in reports:
                no_report += 1
                continue
            if not reports[uid]:
                continue  # counted once per report in `empty`
            path = images_dir / row["filename"]
            if not path.is_file():
                no_image += 1
                continue
            w.writerow([relative_to_csv(path, out_csv), reports[uid]])
            written += 1
    print(f"iu-xray: wrote {written} frontal image-report pairs to {out_csv}; skipped "
          f"{len(empty)} reports with empty findings and impression, {no_report} frontal images "
          f"with no report, {no_image} images not found in {images_dir}")
    return written
