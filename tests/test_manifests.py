"""manifests/read.py: a manifest's rows checked before anything is decoded (each problem one line
naming file, row and column), images decoded once into a cache that a later run opens instead, and
an interrupted or failed build that leaves nothing to be read back."""

import csv
import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from manifests import read as manifest  # noqa: E402
from manifests.read import ManifestError  # noqa: E402
from synthetic import dataset as synthetic  # noqa: E402

S = 64  # image size for the tests

# -----------------------------------------------------------------------------
# Manifests


def test_manifest_round_trip(tmp_path):
    csv_path = synthetic.export_synthetic(tmp_path / "export", 8, image_size=S)
    loaded = manifest.read_pair_manifest(csv_path, S)
    rendered = synthetic.render_synthetic("train", 8, S, workers=1)
    assert torch.equal(loaded["images"], rendered["images"])
    assert loaded["texts"] == rendered["texts"] and loaded["splits"] == ["train"] * 8
    # the label names are those the data uses, sorted; the synthetic 8 are just one such set
    names = loaded["label_names"]
    assert names == sorted(names) and set(names) <= set(synthetic.FINDINGS) and len(names) >= 3
    columns = [synthetic.FINDINGS.index(name) for name in names]
    assert torch.equal(loaded["labels"], rendered["labels"][:, columns])
    assert rendered["labels"].sum() == loaded["labels"].sum()  # no finding of the data was dropped
    rgb = manifest.read_pair_manifest(csv_path, 32, channels=3)  # resized, 3 channels
    assert rgb["images"].shape == (8, 3, 32, 32) and rgb["images"].dtype == torch.uint8


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _png(path, value=128, mode="L", size=(40, 30)):
    Image.new(mode, size, value).save(path)
    return path.name


@pytest.mark.parametrize("case,column,says", [
    ("missing column", "text", "missing"), ("missing image", "image", "file not found"),
    ("unreadable image", "image", "cannot read image"), ("empty text", "text", "empty report"),
    ("empty path", "image", "empty path"), ("duplicate column", "text", "named 2 times (columns [2, 4])"),
    ("too many fields", None, "4 fields, but the header has 3")])
def test_manifest_errors_name_file_row_and_column(tmp_path, case, column, says):
    good = _png(tmp_path / "good.png")
    rows = [[good, "Small left pleural effusion.", "pleural effusion"], [good, "Clear lungs.", ""]]
    header = ["image", "text", "labels"]
    if case == "missing column":
        header, rows = ["image", "labels"], [[r[0], r[2]] for r in rows]
    elif case == "missing image":
        rows[1][0] = "nowhere.png"
    elif case == "unreadable image":
        (tmp_path / "garbage.png").write_bytes(b"this is not a png")
        rows[1][0] = "garbage.png"
    elif case == "empty text":
        rows[1][1] = "   "
    elif case == "empty path":
        rows[1][0] = ""
    elif case == "duplicate column":  # csv.DictReader would silently keep the second 'text'
        header, rows = ["image", "text", "labels", "text"], [r + ["other"] for r in rows]
    elif case == "too many fields":   # a report with a comma outside quotes
        rows[1] = [good, "Clear lungs", " no effusion.", ""]
    path = _write_csv(tmp_path / "pairs.csv", header, rows)
    with pytest.raises(ManifestError) as e:
        manifest.read_pair_manifest(path, 32)
    msg = str(e.value)
    assert msg.startswith(str(path)) and says in msg and "\n" not in msg, msg
    assert column is None or f"column '{column}'" in msg, msg
    assert ("line 1 (header)" in msg) if case in ("missing column", "duplicate column") else ("row 2 (line 3)" in msg), msg


def test_manifest_not_utf8_names_the_line(tmp_path):
    good = _png(tmp_path / "good.png")
    text = f"image,text\n{good},Clear lungs.\n{good},Épanchement pleural gauche.\n"
    (tmp_path / "latin1.csv").write_bytes(text.encode("latin-1"))  # one byte, 0xc9, is not UTF-8
    with pytest.raises(ManifestError) as e:
        manifest.read_pair_manifest(tmp_path / "latin1.csv", 16)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'latin1.csv'}: line 3: byte 0xc9") and "save the manifest as UTF-8" in msg, msg
    (tmp_path / "utf8.csv").write_bytes(text.encode("utf-8"))  # the same text as UTF-8 is fine
    assert manifest.read_pair_manifest(tmp_path / "utf8.csv", 16)["texts"][1] == "Épanchement pleural gauche."


def test_label_names_are_read_from_the_data(tmp_path):
    img = _png(tmp_path / "a.png")
    path = _write_csv(tmp_path / "chexpert.csv", ["image", "text", "labels"], [
        [img, "a", "Lung Opacity; No Finding"], [img, "b", ""], [img, "c", "fracture;lung opacity"]])
    m = manifest.read_pair_manifest(path, 16)
    assert m["label_names"] == ["fracture", "lung opacity", "no finding"]  # lower-cased, sorted
    assert m["labels"].tolist() == [[0, 1, 1], [0, 0, 0], [1, 1, 0]] and m["labels"].dtype == torch.float32
    no_labels = manifest.read_pair_manifest(_write_csv(tmp_path / "plain.csv", ["image", "text"], [[img, "a"]]), 16)
    assert no_labels["labels"] is None and no_labels["label_names"] is None


def test_manifest_accepts_bom_crlf_spaces_and_rgba(tmp_path):
    (tmp_path / "with space").mkdir()
    Image.new("RGBA", (20, 20), (200, 100, 50, 30)).save(tmp_path / "with space" / "my image.png")
    text = "image,text,split\r\nwith space/my image.png,\"Heart normal, lungs clear.\",train\r\n"
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel: byte-order mark, CRLF
    m = manifest.read_pair_manifest(tmp_path / "excel.csv", 16)
    assert m["texts"] == ["Heart normal, lungs clear."] and m["splits"] == ["train"]
    gray = np.asarray(Image.new("RGB", (1, 1), (200, 100, 50)).convert("L"))[0, 0]  # alpha is dropped
    assert (m["images"][0] == int(gray)).all()


def test_truncated_png_among_10000_rows_is_named_by_its_row(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "ok.png")
    png = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:len(png) // 2])  # a copy cut short
    path = _write_csv(tmp_path / "big.csv", ["image", "text"],
                      [["cut.png" if i == 6788 else "ok.png", "Clear lungs."] for i in range(10_000)])
    with pytest.raises(ManifestError) as e:
        manifest.read_pair_manifest(path, 8, workers=2)  # decoded in 2 worker processes
    assert str(e.value) == (f"{path}: row 6789 (line 6790), column 'image': cannot read image "
                            f"{tmp_path / 'cut.png'} (image file is truncated)")


def test_pair_manifest_reads_rgb_16bit_and_absolute_paths(tmp_path):
    rgb = _png(tmp_path / "rgb.png", (200, 10, 10), "RGB")
    a = np.linspace(0, 4000, 40 * 30, dtype=np.uint16).reshape(30, 40)  # a 16-bit radiograph
    Image.fromarray(a).save(tmp_path / "deep.png")
    jpg = tmp_path / "sub" / "x.jpg"
    jpg.parent.mkdir()
    Image.new("L", (50, 50), 90).save(jpg)
    path = _write_csv(tmp_path / "m.csv", ["image", "text", "split"],
                      [[rgb, "a", "train"], ["deep.png", "b", "val"], [str(jpg), "c", "val"]])
    m = manifest.read_pair_manifest(path, 16)
    assert m["images"].shape == (3, 1, 16, 16) and m["labels"] is None and m["splits"] == ["train", "val", "val"]
    deep = m["images"][1, 0].float()
    assert deep.max() >= 250 and deep.min() <= 5  # rescaled by its range, not clipped at 255


def test_class_manifest(tmp_path):
    img = _png(tmp_path / "a.png")
    classes = ["atelectasis", "edema"]
    ok = manifest.read_class_manifest(_write_csv(tmp_path / "ok.csv", ["image", "label"], [[img, "edema"], [img, "Atelectasis"]]), 16, classes)
    assert ok["labels"].tolist() == [1, 0] and ok["images"].shape == (2, 1, 16, 16) and ok["classes"] == classes
    bad = _write_csv(tmp_path / "bad.csv", ["image", "label"], [[img, "edema"], [img, "edema"], [img, "pneumonia"]])
    with pytest.raises(ManifestError, match=r"bad\.csv: row 3 \(line 4\), column 'label'.*pneumonia"):
        manifest.read_class_manifest(bad, 16, classes)
    # cached: the classes are checked at every open (they come from the prompts, not the file)
    cached = manifest.read_class_manifest(bad, 16, classes + ["pneumonia"], cache_dir=tmp_path / "cache")
    assert cached["labels"].tolist() == [1, 1, 2]
    with pytest.raises(ManifestError, match=r"bad\.csv: row 3 \(line 4\), column 'label'.*pneumonia"):
        manifest.read_class_manifest(bad, 16, classes, cache_dir=tmp_path / "cache")


# -----------------------------------------------------------------------------
# The on-disk cache of decoded manifests


def _mixed_manifest(folder, n=6):
    """A small manifest of varied images (sizes, RGB, 16-bit), with labels and splits; row i shows
    image i % 6, so a long manifest still has few files."""
    rng = np.random.default_rng(1)
    for i in range(6):
        if i % 3 == 2:
            Image.fromarray(rng.integers(0, 4000, (30, 40), dtype=np.uint16)).save(folder / f"img {i}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (20 + i, 25, 3), dtype=np.uint8), "RGB").save(folder / f"img {i}.png")
    rows = [[f"img {i % 6}.png", f"report {i}", "edema" if i % 2 else "", "train" if i < n - 1 else "test"]
            for i in range(n)]
    return _write_csv(folder / "m.csv", ["image", "text", "labels", "split"], rows)


def _same(a, b):
    assert torch.equal(a["images"], b["images"]) and a["texts"] == b["texts"]
    assert torch.equal(a["labels"], b["labels"]) and a["label_names"] == b["label_names"] and a["splits"] == b["splits"]


def test_cache_equals_the_memory_decode_and_a_second_open_decodes_nothing(tmp_path, monkeypatch):
    path, cache = _mixed_manifest(tmp_path, n=300), tmp_path / "cache"  # 300 rows: decoded by a pool
    memory = {c: manifest.read_pair_manifest(path, 16, c, workers=2) for c in (1, 3)}
    for c in (1, 3):
        one_by_one = np.stack([manifest.load_image(tmp_path / f"img {i % 6}.png", 16, c) for i in range(300)])
        assert torch.equal(memory[c]["images"], torch.from_numpy(one_by_one))
        _same(manifest.read_pair_manifest(path, 16, c, cache_dir=cache, workers=2), memory[c])
    folder = cache / manifest.cache_name(path, 16, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted([folder.name, manifest.cache_name(path, 16, 3)])
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "index.json"]

    def no_decoding(*args):
        raise AssertionError("decoded again")
    monkeypatch.setattr(manifest, "load_image", no_decoding)
    monkeypatch.setattr(manifest, "_parse_csv", no_decoding)  # nor is the CSV parsed again
    for c in (1, 3):
        _same(manifest.read_pair_manifest(path, 16, c, cache_dir=cache), memory[c])
    # the memory map is copy-on-write: a caller writing into the images never changes the cache
    manifest.read_pair_manifest(path, 16, cache_dir=cache)["images"][:10] = 0
    _same(manifest.read_pair_manifest(path, 16, cache_dir=cache), memory[1])


def test_cache_key_follows_content_size_channels_and_folder(tmp_path):
    path = _mixed_manifest(tmp_path)
    key = manifest.cache_name(path, 16, 1)
    assert key == manifest.cache_name(path, 16, 1) and key.startswith("m-16px-1ch-")
    assert len({key, manifest.cache_name(path, 32, 1), manifest.cache_name(path, 16, 3)}) == 3
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / "m.csv"  # the same bytes, but its relative paths point elsewhere
    copy.write_bytes(path.read_bytes())
    assert manifest.cache_name(copy, 16, 1) != key
    path.write_bytes(path.read_bytes().replace(b"report 3", b"report 4"))  # one byte changed
    assert manifest.cache_name(path, 16, 1) != key


class Boom(Exception):
    pass


@pytest.mark.parametrize("how", [KeyboardInterrupt, ManifestError, Boom])
def test_an_interrupted_build_leaves_nothing_that_is_read_back(tmp_path, monkeypatch, how):
    path, cache = _mixed_manifest(tmp_path), tmp_path / "cache"
    reference = manifest.read_pair_manifest(path, 16)
    decode, calls = manifest.load_image, [0]

    def fails_on_the_fourth(*args):
        calls[0] += 1
        if calls[0] == 4:
            if how is ManifestError:  # a user's mistake found in the middle: a file gone
                os.remove(tmp_path / "img 4.png")
            else:
                raise how("stop")    # Ctrl-C, or a bug
        return decode(*args)
    monkeypatch.setattr(manifest, "load_image", fails_on_the_fourth)
    with pytest.raises(how):
        manifest.read_pair_manifest(path, 16, cache_dir=cache)
    assert list(cache.iterdir()) == []       # no folder, no temporary left behind
    if how is ManifestError:
        Image.new("L", (9, 9), 7).save(tmp_path / "img 4.png")
        reference = manifest.read_pair_manifest(path, 16)
    monkeypatch.setattr(manifest, "load_image", decode)
    _same(manifest.read_pair_manifest(path, 16, cache_dir=cache), reference)  # the next start builds it


def test_text_problems_are_reported_before_any_image_is_decoded(tmp_path, monkeypatch):
    img = _png(tmp_path / "a.png")

    def no_decoding(*args):
        raise AssertionError("decoded an image of a manifest already known to be wrong")
    monkeypatch.setattr(manifest, "load_image", no_decoding)
    pairs = _write_csv(tmp_path / "pairs.csv", ["image", "text"], [[img, "a"], [img, " "]])
    with pytest.raises(ManifestError, match=r"pairs\.csv: row 2 \(line 3\), column 'text': empty report"):
        manifest.read_pair_manifest(pairs, 16, cache_dir=tmp_path / "cache")
    labels = _write_csv(tmp_path / "labels.csv", ["image", "label"], [[img, "edema"], [img, "dragon"]])
    with pytest.raises(ManifestError, match=r"labels\.csv: row 2 \(line 3\), column 'label': unknown class 'dragon'"):
        manifest.read_class_manifest(labels, 16, ["edema", "nodule"], cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_full_disk_is_a_clear_error_before_decoding(tmp_path, monkeypatch):
    path, cache = _mixed_manifest(tmp_path), tmp_path / "cache"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(ManifestError) as e:
        manifest.read_pair_manifest(path, 16, cache_dir=cache)
    assert str(e.value) == (f"{cache}: no room for the cache of {path} (0.0 GB): "
                            f"{os.strerror(errno.ENOSPC)}")
    assert list(cache.iterdir()) == []


def test_a_killed_build_leaves_nothing_that_is_read_back(tmp_path):
    """SIGKILL in the middle of a build (no clean-up can run): its temporary folder is never read,
    and the next build removes it."""
    path, cache = _mixed_manifest(tmp_path), tmp_path / "cache"
    script = (f"import os, signal, sys; sys.path.insert(0, {str(ROOT)!r}); from manifests import read as manifest\n"
              f"decode, calls = manifest.load_image, []\n"
              f"def dies(*a):\n"
              f"    calls.append(1)\n"
              f"    if len(calls) == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"    return decode(*a)\n"
              f"manifest.load_image = dies\n"
              f"manifest.read_pair_manifest({str(path)!r}, 16, cache_dir={str(cache)!r})\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert [p.name.split(".tmp-")[0] for p in cache.iterdir()] == [f".{manifest.cache_name(path, 16, 1)}"]
    _same(manifest.read_pair_manifest(path, 16, cache_dir=cache), manifest.read_pair_manifest(path, 16))
    assert [p.name for p in cache.iterdir()] == [manifest.cache_name(path, 16, 1)]


def test_a_worker_error_in_a_pool_build_leaves_nothing(tmp_path, monkeypatch):
    img = _png(tmp_path / "a.png")
    path = _write_csv(tmp_path / "m.csv", ["image", "text"], [[img, "a"]] * 299 + [["b.png", "b"]])
    Image.new("L", (5, 5)).save(tmp_path / "b.png")
    decode = manifest.load_image
    monkeypatch.setattr(manifest, "load_image", lambda p, *a: decode(p, *a) if p.endswith("a.png") else 1 / 0)
    with pytest.raises(ZeroDivisionError):   # raised in a worker process (they fork with the patch)
        manifest.read_pair_manifest(path, 8, cache_dir=tmp_path / "cache", workers=2)
    assert list((tmp_path / "cache").iterdir()) == []
