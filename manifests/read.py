"""Your image-report data through manifests: a CSV of image paths and texts (docs/data.md).

Rows are checked before anything is decoded (each problem one line naming the file, row and column),
images decoded once, in parallel, into a memory-mapped uint8 cache beside the run that a later run
(or another rank) opens instead of decoding again.

    read_pair_manifest(csv, image_size)          training pairs: image, text (labels, split)
    read_class_manifest(csv, image_size, classes) a classification set: image, label

Depends on torch, numpy, Pillow and plumbing/runtime.py.
"""

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from plumbing.runtime import WriteError, reason, worker_signals
from synthetic.dataset import to_uint8



class ManifestError(ValueError):
    """Bad input in a manifest; the message names the file, the row and the column at fault."""


def _open_csv(path, required):
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    f = open(path, newline="", encoding="utf-8-sig")  # utf-8-sig: tolerate Excel's byte-order mark
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    for col in required:
        if col not in header:
            f.close()
            raise ManifestError(f"{path}: line 1 (header), column '{col}': missing (header is {header})")
    return f, reader


def _where(path, row, line, column=None):
    return f"{path}: row {row} (line {line})" + (f", column '{column}'" if column else "")


def load_image(path, image_size, channels=1):
    """An image file -> uint8 (channels, image_size, image_size): centre-cropped to a square and
    resized. 16-bit grayscale (common for radiographs) is rescaled by its own range, because
    Pillow's plain conversion to 8 bits would clip it."""
    with Image.open(path) as im:
        im.load()  # decode now, so a corrupt file fails here and not later
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(im, dtype=np.float32)
            lo, hi = float(a.min()), float(a.max())
            im = Image.fromarray(to_uint8((a - lo) / max(hi - lo, 1e-6)), "L")
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (image_size, image_size):
            im = ImageOps.fit(im, (image_size, image_size), Image.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


# The columns the readers use; a manifest may have others (patient ids, ...): they are ignored.
COLUMNS = ("image", "text", "labels", "split", "label")


def _raise_all(errors):
    """Every problem was collected; show the first 20, so one run lists what to fix."""
    if errors:
        more = f"\n({len(errors) - 1} more problems:)\n" + "\n".join(errors[1:20]) if len(errors) > 1 else ""
        raise ManifestError(errors[0] + more)


def _parse_csv(path, required):
    """The text of a manifest: {"header", "columns": {name: [str] per row, stripped}, "lines"}.
    Refuses what would otherwise be read wrong without a word: bytes that are not UTF-8, a column
    named twice (csv.DictReader keeps the last), a row with more fields than the header (an
    unquoted comma in a report would cut it short)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate Excel's byte-order mark
            reader = csv.reader(f)
            header = next(reader, [])
            _check_header(path, header, required)
            want = {name: header.index(name) for name in COLUMNS if name in header}
            columns, lines, errors = {name: [] for name in want}, [], []
            for fields in reader:
                if not fields:
                    continue  # a blank line
                if len(fields) > len(header):
                    errors.append(f"{_where(path, len(lines) + 1, reader.line_num)}: {len(fields)} fields, but "
                                  f"the header has {len(header)} (a comma in a report outside quotes?)")
                for name, i in want.items():
                    columns[name].append(fields[i].strip() if i < len(fields) else "")
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        with open(path, "rb") as f:  # find the line: a newline byte never occurs inside a UTF-8 character
            for line_no, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ManifestError(f"{path}: line {line_no}: byte 0x{raw[e.start]:02x} at character "
                                        f"{e.start + 1} is not UTF-8 (a Latin-1 or Windows-1252 file?): "
                                        f"save the manifest as UTF-8") from None
        raise
    if not lines:
        raise ManifestError(f"{path}: no data rows")
    _raise_all(errors)
    return {"header": header, "columns": columns, "lines": lines}


def _check_header(path, header, required):
    for name in COLUMNS:
        if header.count(name) > 1:
            at = [i + 1 for i, h in enumerate(header) if h == name]
            raise ManifestError(f"{path}: line 1 (header), column '{name}': named {len(at)} times "
                                f"(columns {at}); keep one")
    for name in required:
        if name not in header:
            raise ManifestError(f"{path}: line 1 (header), column '{name}': missing (header is {header})")


def _decode_chunk(job):
    """Worker: decode rows start.. of one chunk -> (start, uint8 (k, C, H, W), [(row index, problem)])."""
    start, paths, image_size, channels = job
    out = np.zeros((len(paths), channels, image_size, image_size), np.uint8)
    problems = []
    for j, path in enumerate(paths):
        if not os.path.isfile(path):
            problems.append((start + j, f"file not found: {path}"))
            continue
        try:
            out[j] = load_image(path, image_size, channels)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's ways to say "corrupt"
            problems.append((start + j, f"cannot read image {path} ({e})"))
    return start, out, problems


class _Progress:
    """Images decoded, rate and time left: one line redrawn with \\r on a terminal, a line every
    10 s in a log file."""

    def __init__(self, total, what, log):
        self.total, self.what, self.log = total, what, log
        self.t0 = self.shown = time.time()
        self.tty = sys.stdout.isatty()

    def update(self, done):
        now = time.time()
        if now - self.shown < (0.2 if self.tty else 10) and done < self.total:
            return
        self.shown = now
        rate = done / max(now - self.t0, 1e-9)
        left = int((self.total - done) / max(rate, 1e-9))
        line = (f"{self.what}: {done}/{self.total} images ({100 * done // self.total}%), "
                f"{rate:.0f} images/s, {left // 60}:{left % 60:02d} left")
        if self.tty:
            self.log("\r" + line, end="\n" if done == self.total else "", flush=True)
        elif done < self.total:
            self.log(line, flush=True)


def _decode_all(csv_path, table, out, image_size, channels, workers, log):
    """Decode every row's image into out (n, C, H, W), in worker processes; collect every problem."""
    paths = [str(p if p.is_absolute() else csv_path.parent / p) for p in map(Path, table["columns"]["image"])]
    chunk = 64
    jobs = [(s, paths[s:s + chunk], image_size, channels) for s in range(0, len(paths), chunk)]
    workers = workers or os.cpu_count() or 1
    progress, done, problems = _Progress(len(paths), f"decoding {csv_path.name}", log), 0, []
    pool = None
    if workers > 1 and len(paths) >= 256:  # below that, starting processes costs more than it saves
        pool = multiprocessing.get_context().Pool(workers, initializer=worker_signals)
    try:
        for start, images, bad in (pool.imap_unordered(_decode_chunk, jobs) if pool else map(_decode_chunk, jobs)):
            out[start:start + len(images)] = images
            problems += bad
            done += len(images)
            progress.update(done)
    finally:
        if pool:
            pool.terminate()  # at once, also on Ctrl-C or an error: no half-finished work is kept
    rate = len(paths) / max(time.time() - progress.t0, 1e-9)
    log(f"data: decoded {len(paths)} images of {csv_path} in {time.time() - progress.t0:.1f}s "
        f"({rate:.0f} images/s, {workers if pool else 1} process(es))", flush=True)
    _raise_all([f"{_where(csv_path, i + 1, table['lines'][i], 'image')}: {p}" for i, p in sorted(problems)])


# Bump when load_image or the cache's layout change, so an old cache is never read back.
CACHE_VERSION = 1


def cache_name(csv_path, image_size, channels):
    """The cache folder's name: the manifest's name, then a hash of its bytes, of the folder its
    relative image paths start from, of the image size, channels and CACHE_VERSION. Edited
    images behind an unchanged manifest are not noticed: delete the folder then."""
    csv_path = Path(csv_path)
    h = hashlib.blake2b(digest_size=16)
    with open(csv_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(f"|{csv_path.resolve().parent}|{image_size}|{channels}|{CACHE_VERSION}".encode())
    return f"{csv_path.stem}-{image_size}px-{channels}ch-{h.hexdigest()[:16]}"


def _open_cache(folder):
    with open(folder / "index.json", encoding="utf-8") as f:
        table = json.load(f)
    images = np.load(folder / "images.npy", mmap_mode="c")  # copy-on-write: the file is never written
    if images.shape[0] != len(table["lines"]):
        raise ManifestError(f"{folder}: {images.shape[0]} images but {len(table['lines'])} rows: "
                            f"a damaged cache; delete this folder")
    return images, table


def _running(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):  # another user's process; not a pid: leave it alone
        return True
    return True


def _build_cache(csv_path, table, folder, image_size, channels, workers, log):
    """Decode into folder/images.npy beside folder/index.json, in a temporary folder renamed when
    complete: an interrupted build (Ctrl-C, an error, a kill) leaves nothing that is read back."""
    for old in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed build
        if not _running(old.name.rsplit("-", 1)[1]):
            shutil.rmtree(old)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        shape = (len(table["lines"]), channels, image_size, image_size)
        out = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, shape)
        if hasattr(os, "posix_fallocate"):
            # Reserve the disk space now: writing into a memory map of a sparse file on a disk that
            # fills up kills the process with SIGBUS, where this raises a clear error first.
            with open(tmp / "images.npy", "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, out.offset + out.size)
                except OSError as e:
                    raise ManifestError(f"{folder.parent}: no room for the cache of {csv_path} "
                                        f"({out.size / 1e9:.1f} GB): {e.strerror}") from None
        _decode_all(csv_path, table, out, image_size, channels, workers, log)
        out.flush()
        del out
        with open(tmp / "index.json", "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "manifest": str(csv_path), **table}, f, ensure_ascii=False)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "index.json").is_file():  # not another process that finished first
                raise
            shutil.rmtree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):   # the cache's disk or folder, not the manifest: say so in a line
            raise WriteError(f"cannot write the cache of {csv_path} in {folder.parent}: "
                             f"{reason(e)}; nothing of it was kept: free space, or --data-cache '' "
                             f"to decode into memory") from None
        raise
    log(f"data: cached in {folder}", flush=True)


def read_manifest(csv_path, image_size, channels=1, required=("image",), check=None, cache_dir=None,
                  workers=0, log=print):
    """Any manifest -> {"images": uint8 tensor (n, C, H, W), "columns": {name: [str]}, "lines": [int]}.
    check(columns, lines) -> [problem]: the caller's checks of the text columns, run before any image
    is decoded (a wrong report should not cost a build) and at every open of the cache.

    With cache_dir, the images are decoded once into cache_dir/<cache_name>/ and afterwards memory-
    mapped from there: a second start decodes nothing, and a training run holds in memory only the
    windows it reads (the operating system pages the rest in and out). Without, they are decoded
    into memory. Either way in `workers` processes (0 = all cores), every row checked, every
    problem reported with its row, line and column. log: a print-like function for progress."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    folder = Path(cache_dir) / cache_name(csv_path, image_size, channels) if cache_dir else None
    if folder is not None and folder.is_dir():
        images, table = _open_cache(folder)
        _check_header(csv_path, table["header"], required)
        _raise_all(check(table["columns"], table["lines"]) if check else [])
        log(f"data: {len(images)} images of {csv_path} memory-mapped from {folder}", flush=True)
    else:
        table = _parse_csv(csv_path, required)
        cols, lines = table["columns"], table["lines"]
        _raise_all([f"{_where(csv_path, i + 1, line, 'image')}: empty path"
                    for i, (path, line) in enumerate(zip(cols["image"], lines)) if not path] +
                   (check(cols, lines) if check else []))
        if folder is None:
            images = np.empty((len(table["lines"]), channels, image_size, image_size), np.uint8)
            _decode_all(csv_path, table, images, image_size, channels, workers, log)
        else:
            _build_cache(csv_path, table, folder, image_size, channels, workers, log)
            images, table = _open_cache(folder)
    return {"images": torch.from_numpy(images), "columns": table["columns"], "lines": table["lines"]}


def parse_labels(value):
    """"Lung Opacity; pleural effusion" -> ["lung opacity", "pleural effusion"]."""
    return [name.strip().lower() for name in value.split(";") if name.strip()]


def read_pair_manifest(csv_path, image_size, channels=1, cache_dir=None, workers=0, log=print):
    """Image-report pairs from a CSV with columns image, text (and optional labels, split).
    Returns {"images": uint8 (n, C, H, W), "texts", "labels": float (n, F) multi-hot or None,
    "label_names": the F finding names found in the labels column, sorted (or None), "splits"}."""
    def check(cols, lines):
        return [f"{_where(csv_path, i + 1, line, 'text')}: empty report"
                for i, (text, line) in enumerate(zip(cols["text"], lines)) if not text]

    m = read_manifest(csv_path, image_size, channels, ("image", "text"), check, cache_dir, workers, log)
    cols = m["columns"]
    labels = names = None
    if "labels" in cols:
        # The findings are whatever the data names: the synthetic set's 8, CheXpert's 14, ...
        per_row = [parse_labels(value) for value in cols["labels"]]
        names = sorted({name for row in per_row for name in row})
        column = {name: j for j, name in enumerate(names)}
        at = [(i, column[name]) for i, row in enumerate(per_row) for name in row]
        labels = torch.zeros(len(per_row), len(names))  # (n, F) multi-hot
        labels[[i for i, _ in at], [j for _, j in at]] = 1.0
    return {"images": m["images"], "texts": cols["text"], "labels": labels, "label_names": names,
            "splits": cols.get("split")}


def read_class_manifest(csv_path, image_size, classes, channels=1, cache_dir=None, workers=0, log=print):
    """A classification set: columns image, label (one of `classes`, e.g. the prompt file's names).
    Returns {"images": uint8 (n, C, H, W), "labels": long (n,), "classes": classes}."""
    lookup = {c.lower(): i for i, c in enumerate(classes)}

    def check(cols, lines):  # at every open: the classes come from the prompts, not the file
        return [f"{_where(csv_path, i + 1, line, 'label')}: unknown class {value!r}; known: {list(classes)}"
                for i, (value, line) in enumerate(zip(cols["label"], lines)) if value.lower() not in lookup]

    m = read_manifest(csv_path, image_size, channels, ("image", "label"), check, cache_dir, workers, log)
    labels = torch.tensor([lookup[value.lower()] for value in m["columns"]["label"]], dtype=torch.long)
    return {"images": m["images"], "labels": labels, "classes": list(classes)}


