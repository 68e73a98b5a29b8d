"""
The CSV helpers that every converter of tools/convert.py shares: reading a distributed CSV (plain
or gzip-compressed) row by row, naming where a bad value is, reading the CheXpert labeler's cells,
and writing a manifest through a temporary file.

Every problem is a ManifestError naming the file, and the row, line and column where there are
some, so that the command line can print it as one line.
"""

import csv
import gzip
import os
import zlib
from pathlib import Path

from manifests.read import ManifestError

# The 14 observations of the CheXpert labeler (Irvin et al. 2019), as CheXpert's train.csv orders
# them. MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv.gz has the same 14 (the same labeler run on
# its reports), in alphabetical order; a labels cell lists the positives in this order.
OBSERVATIONS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]

# A labeler cell: 1.0 mentioned as present, 0.0 mentioned as absent, -1.0 uncertain ("may
# represent", "cannot exclude"), blank not mentioned.
LABEL_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}


# -----------------------------------------------------------------------------
# Reading the distributed CSVs (plain or gzip-compressed)


def iter_table(path, columns):
    """Rows of a CSV as (row number, line, {column: stripped value}) for the named columns, which
    must all be in the header. A name ending in .gz is read through gzip, as MIMIC ships its CSVs.
    Every problem, including one deep inside a compressed file, is a ManifestError naming the file
    (and the line where there is one)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            index = _column_index(path, header, columns)
            row_no = 0
            for values in reader:
                line = reader.line_num
                if not values:
                    continue  # a blank line
                row_no += 1
                if len(values) != len(header):
                    raise ManifestError(f"{path}: row {row_no} (line {line}): {len(values)} fields, "
                                        f"the header has {len(header)}")
                yield row_no, line, {col: values[i].strip() for col, i in zip(columns, index)}
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ManifestError(f"{path}: not a readable gzip file ({e})") from None
    except UnicodeDecodeError:
        raise ManifestError(_first_undecodable(path, opener)) from None
    except csv.Error as e:
        raise ManifestError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None


def _column_index(path, header, columns):
    """The position of each of columns in header; each must be there exactly once."""
    for col in columns:
        if col not in header:
            raise ManifestError(f"{path}: line 1 (header), column '{col}': missing (header is {header})")
    for col in columns:  # csv.DictReader would silently keep the last of two
        if header.count(col) > 1:
            raise ManifestError(f"{path}: line 1 (header), column '{col}': appears {header.count(col)} times")
    return [header.index(col) for col in columns]


def _first_undecodable(path, opener):
    """The message for a file that is not UTF-8. Text is decoded in chunks of kilobytes, so the
    decoder's error does not say on which line it was: find that line by reading again, in bytes."""
    with opener(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"{path}: line {line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                        f"{e.start + 1}; save the file as UTF-8)")
    return f"{path}: not UTF-8 text"


def csv_header(path):
    """The stripped column names of a plain CSV's first line."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [name.strip() for name in next(csv.reader(f), [])]


def where(path, row, line, column):
    """The start of an error message about one cell."""
    return f"{path}: row {row} (line {line}), column '{column}'"


def label_value(value, at):
    """A labeler cell -> 1, 0, -1 or None (blank); at: where the cell is, for the error."""
    if value not in LABEL_VALUES:
        raise ManifestError(f"{at}: {value!r} is not a label (1.0, 0.0, -1.0 or blank)")
    return LABEL_VALUES[value]


# -----------------------------------------------------------------------------
# Writing a manifest


def relative_to_csv(path, out_csv):
    """path (a file or a folder) as written in the manifest out_csv: relative to out_csv's folder,
    so that the manifest and the images can move together."""
    return os.path.relpath(Path(path).resolve(), Path(out_csv).parent.resolve())


def write_csv(out_csv, header, rows, if_empty="no rows to write"):
    """rows (an iterable, which may raise) -> out_csv, via a temporary file renamed at the end, so
    a failure never leaves a half-written file nor replaces a good one. No rows at all is an
    error too: if_empty, a message or a function that makes it. Returns the number of rows."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(row)
                n += 1
        if n == 0:
            raise ManifestError(if_empty() if callable(if_empty) else if_empty)
        os.replace(tmp, out_csv)
    finally:
        tmp.unlink(missing_ok=True)
    return n
