"""
Public chest X-ray data sets -> this repository's manifests (see data.py for the format).

One command per data set, each reading the files exactly as they are distributed:

    python -m tools.convert iu-xray --reports indiana_reports.csv --projections indiana_projections.csv \\
        --images images/images_normalized --out iu_xray.csv          # pairs, frontal images
    python -m tools.convert mimic-cxr --root mimic-cxr-jpg/2.0.0 --reports mimic-cxr-reports \\
        --out mimic_cxr.csv                                         # pairs + labels + split
    python -m tools.convert chexpert-5x200 --csv CheXpert-v1.0-small/train.csv \\
        --out chexpert_5x200.csv                                    # zero-shot set + prompts
    python -m tools.convert ms-cxr --csv MS_CXR_Local_Alignment_v1.1.0.csv --images mimic-cxr-jpg/2.0.0 \\
        --out ms_cxr.csv                                            # phrases with boxes (grounding)

Pair manifests (IU X-Ray, MIMIC-CXR) are for train.py --train-manifest and eval.py
--retrieval-manifest; the 5x200 set and its prompt file are for eval.py --eval-manifest / --prompts;
the MS-CXR manifest is a grounding manifest (manifests/grounding.py, docs/grounding.md).
Image paths are written relative to the output CSV's folder, so the CSV and the images can move
together. mimic-cxr, chexpert-5x200 and ms-cxr write to a temporary file renamed at the end: an
error never leaves a half-written manifest behind (iu-xray writes in place, once every input is
read). What was skipped, and why, is counted aloud.

This file is the command line. Each data set's converter is a file beside it (iu_xray.py,
mimic_cxr.py, chexpert_5x200.py, ms_cxr.py), and tables.py holds the CSV reading and writing
they share.
"""

import argparse
import sys

from manifests.read import ManifestError
from tools.chexpert_5x200 import convert_chexpert_5x200
from tools.iu_xray import convert_iu_xray
from tools.mimic_cxr import MIMIC_CHEXPERT, MIMIC_METADATA, MIMIC_SPLIT, MIMIC_SPLITS, convert_mimic_cxr
from tools.ms_cxr import convert_ms_cxr

__all__ = ["main", "build_parser", "convert_iu_xray", "convert_mimic_cxr", "convert_chexpert_5x200",
           "convert_ms_cxr"]


def build_parser():
    """The command line: one subcommand per data set."""
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("iu-xray", help="IU X-Ray (Open-I) CSVs -> a manifest of frontal images")
    p.add_argument("--reports", required=True, help="indiana_reports.csv")
    p.add_argument("--projections", required=True, help="indiana_projections.csv")
    p.add_argument("--images", required=True, help="folder holding the images named in projections")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p = sub.add_parser("mimic-cxr", help="MIMIC-CXR-JPG -> a manifest of frontal images with split and labels")
    p.add_argument("--root", required=True,
                   help=f"MIMIC-CXR-JPG folder: {MIMIC_METADATA}, {MIMIC_SPLIT}, optional {MIMIC_CHEXPERT}, files/")
    p.add_argument("--reports", default=None,
                   help="folder holding the reports' files/pNN/pNNNNNNNN/sNNNNNNNN.txt (MIMIC-CXR's "
                        "mimic-cxr-reports.zip, unpacked; default: --root)")
    p.add_argument("--splits", default=",".join(MIMIC_SPLITS),
                   help="comma-separated splits to write (default: %(default)s); train.py trains on "
                        "every row, so write --splits train for training and --splits test for eval.py")
    p.add_argument("--uncertain", choices=["negative", "positive"], default="negative",
                   help="how to read the labeler's uncertain (-1.0) cells (default: %(default)s)")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p = sub.add_parser("chexpert-5x200", help="CheXpert train.csv -> a 5x200 zero-shot manifest and prompt file")
    p.add_argument("--csv", required=True, help="CheXpert's train.csv (or valid.csv)")
    p.add_argument("--images", default=None,
                   help="folder the Path column is relative to (default: the CSV's folder's parent)")
    p.add_argument("--per-class", type=int, default=200, help="images per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--out", required=True, help="classification manifest CSV to write")
    p.add_argument("--prompts", default=None, help="prompt JSON to write (default: beside --out, <name>_prompts.json)")
    p = sub.add_parser("ms-cxr", help="MS-CXR's CSV -> a grounding manifest (phrases with boxes)")
    p.add_argument("--csv", required=True, help="MS_CXR_Local_Alignment_v1.0.0.csv or _v1.1.0.csv")
    p.add_argument("--images", required=True,
                   help="the MIMIC-CXR-JPG folder its path column is relative to (the one holding files/)")
    p.add_argument("--splits", default=None,
                   help="comma-separated values of v1.1.0's split column to keep (default: every row, "
                        "as BioViL evaluates on the whole set)")
    p.add_argument("--out", required=True, help="grounding manifest CSV to write")
    return parser


def run(parser, args):
    """Run the subcommand that args names; a wrong option value is a usage error (exit 2)."""
    if args.command == "iu-xray":
        convert_iu_xray(args.reports, args.projections, args.images, args.out)
    elif args.command == "mimic-cxr":
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        unknown = [s for s in splits if s not in MIMIC_SPLITS]
        if unknown or not splits:
            parser.error(f"--splits {args.splits!r}: each must be one of {MIMIC_SPLITS}")
        convert_mimic_cxr(args.root, args.out, args.reports, splits, args.uncertain)
    elif args.command == "ms-cxr":
        splits = [x.strip() for x in args.splits.split(",") if x.strip()] if args.splits else None
        convert_ms_cxr(args.csv, args.images, args.out, splits)
    else:
        if args.per_class < 1:
            parser.error(f"--per-class must be at least 1, got {args.per_class}")
        convert_chexpert_5x200(args.csv, args.out, args.prompts, args.images, args.per_class, args.seed)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(parser, args)
    except (ManifestError, OSError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"convert.py {args.command}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
