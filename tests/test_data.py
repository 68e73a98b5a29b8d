"""Tests for data.py: each pins a property the rest of the project relies on (fast: small images)."""

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
import data  # noqa: E402
from manifests import read as manifest  # noqa: E402
from tools import plot  # noqa: E402
from synthetic import dataset as synthetic  # noqa: E402
from data import PAD_ID  # noqa: E402
from manifests.read import ManifestError  # noqa: E402
from synthetic.dataset import EVAL_SEED, TRAIN_SEED  # noqa: E402

S = 64  # image size for the tests


# -----------------------------------------------------------------------------
# Augmentation


def test_train_augment_keeps_shape_range_and_sides():
    x = torch.zeros(16, 1, S, S)
    x[:, :, 24:40, 6:18] = 1.0  # a bright marker on the image's left
    torch.manual_seed(0)
    y = data.train_augment(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    # the marker's centre of mass stays near column 12 (a flip would put it near column 52)
    bright = (y - y.flatten(1).median(1).values[:, None, None, None]).clamp(min=0)[:, 0]  # (B, H, W)
    column = (bright.sum(1) * torch.arange(S)).sum(1) / bright.sum((1, 2))
    assert (column < 20).all(), column
    assert not torch.equal(y[0], y[1])  # each sample gets its own transform


def test_train_augment_randomness_is_torch_only():
    x = torch.rand(4, 1, 32, 32)
    torch.manual_seed(1)
    np.random.seed(0)
    a = data.train_augment(x)
    torch.manual_seed(1)
    np.random.seed(123)  # other generators must not matter: resume restores torch's state only
    import random
    random.seed(5)
    b = data.train_augment(x)
    assert torch.equal(a, b)


def _params(n, **fixed):
    p = {"angle": torch.zeros(n), "tx": torch.zeros(n), "ty": torch.zeros(n), "scale": torch.ones(n),
         "brightness": torch.ones(n), "contrast": torch.ones(n)}
    p.update({k: torch.as_tensor(v, dtype=torch.float32).expand(n).clone() for k, v in fixed.items()})
    return p


def test_batched_geometry_equals_torchvision_affine():
    # the reference: torchvision's affine, one image at a time, nearest pixel (RandomAffine's default)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, S + 4, S + 4), 5, 1)   # some structure
    for angle, tx, ty, scale in [(4, 0, 0, 1), (-3, 2, -1, 0.97), (0, -2, 2, 1.04), (90, 0, 0, 1)]:
        ref = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.NEAREST)
        out = data.apply_augment(x, _params(1, angle=angle, tx=tx / S, ty=ty / S, scale=scale))
        assert torch.equal(out, ref), (angle, tx, ty, scale)
    # the same parameters, identity: the image unchanged, bit for bit
    assert torch.equal(data.apply_augment(x, _params(1)), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_photometry_equals_torchvision(channels):
    from torchvision.transforms.v2 import functional as TF
    x = torch.rand(4, channels, 16, 16)
    b, c = torch.tensor([0.9, 1.1, 1.0, 1.05]), torch.tensor([1.1, 0.9, 0.95, 1.0])
    p = _params(4)
    p.update(brightness=b, contrast=c)
    ref = torch.stack([TF.adjust_contrast(TF.adjust_brightness(x[i], float(b[i])), float(c[i]))
                       for i in range(4)])
    torch.testing.assert_close(data.apply_augment(x, p), ref, atol=1e-5, rtol=0)


def test_augment_params_stay_in_their_ranges():
    p = data.augment_params(4096, generator=torch.Generator().manual_seed(0))
    lo, hi = data.SCALE
    for key, low, high in [("angle", -data.DEGREES, data.DEGREES), ("tx", -data.TRANSLATE, data.TRANSLATE),
                           ("ty", -data.TRANSLATE, data.TRANSLATE), ("scale", lo, hi),
                           ("brightness", 1 - data.BRIGHTNESS, 1 + data.BRIGHTNESS),
                           ("contrast", 1 - data.CONTRAST, 1 + data.CONTRAST)]:
        v = p[key]
        assert v.shape == (4096,) and v.min() >= low and v.max() <= high, key
        assert v.max() - v.min() > 0.9 * (high - low), key     # the whole range is used


def test_apply_augment_refuses_non_square_images():
    with pytest.raises(ValueError, match="square images, got 32 x 48"):
        data.apply_augment(torch.rand(1, 1, 32, 48), _params(1))


# -----------------------------------------------------------------------------
# Duplicate-aware report ids


def test_report_ids_equal_iff_normalised_text_equal():
    ids = data.report_ids(["No acute process.", "  no ACUTE   process ", "No acute process!", "No acute processes."])
    assert ids.dtype == torch.int64 and (ids >= 0).all()
    assert ids[0] == ids[1] == ids[2] and ids[0] != ids[3]


def test_report_ids_are_the_same_in_every_process():
    # pinned values: Python's salted hash() would change them from one process to the next
    texts = ["FINDINGS: The lungs are clear.", "Small left pleural effusion."]
    assert data.report_ids(texts).tolist() == [5754151493906059403, 4693294839202170079]


# -----------------------------------------------------------------------------
# Tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = [synthetic.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
    return data.train_tokenizer(texts, vocab_size=512)


def test_tokenize_pads_truncates_and_keeps_a_token(tokenizer):
    texts = ["", "Small left pleural effusion.", " ".join(["edema"] * 100)]
    ids, mask = data.tokenize(tokenizer, texts, 16)
    assert ids.shape == (3, 16) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.equal(mask, ids != PAD_ID)
    assert (mask.sum(1) >= 1).all()            # even the empty text: [CLS] [SEP]
    assert mask[0].sum() == 2 and not mask[1].all()  # short texts are padded with PAD_ID
    assert mask[2].all()                       # long texts are truncated to the context ...
    sep = tokenizer.token_to_id("[SEP]")
    assert ids[2, -1] == sep and ids[0, 0] == tokenizer.token_to_id("[CLS]")  # ... and keep [SEP]
    assert tokenizer.token_to_id("[PAD]") == PAD_ID
    # lower-casing normaliser: case does not change the ids
    assert torch.equal(data.tokenize(tokenizer, ["CARDIOMEGALY"], 8)[0], data.tokenize(tokenizer, ["cardiomegaly"], 8)[0])


def test_tokenizer_is_deterministic_and_spells_unseen_words(tokenizer):
    texts = [synthetic.make_study(TRAIN_SEED, i, 8).report for i in range(300)]
    again = data.train_tokenizer(list(reversed(texts)), vocab_size=512)  # order must not matter either
    assert again.get_vocab() == tokenizer.get_vocab()  # same data -> same vocabulary -> same model
    unk = tokenizer.token_to_id("[UNK]")
    ids, _ = data.tokenize(tokenizer, ["Pneumomediastinum."], 16)
    assert unk not in ids.tolist()[0]  # an unseen word is spelled in pieces, not lost


def test_tokenizer_save_and_load_round_trip(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = data.load_tokenizer(path)
    texts = [synthetic.make_study(EVAL_SEED, i, 8).report for i in range(20)]
    assert torch.equal(data.tokenize(tokenizer, texts, 64)[0], data.tokenize(loaded, texts, 64)[0])
    with pytest.raises(FileNotFoundError):
        data.load_tokenizer(tmp_path / "missing.json")


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


# -----------------------------------------------------------------------------
# Command line


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "data.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_show_and_export(tmp_path):
    r = _cli("show", "--out", "grid.png", "--n", "5", "--image-size", "64", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    w, h = plot.show_tile_size(64)
    assert Image.open(tmp_path / "grid.png").size == (3 * w, 2 * h)  # 5 studies: 3 columns, 2 rows
    r = _cli("export", "--out", "exp", "--n", "4", "--image-size", "32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "exp" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all((tmp_path / "exp" / row["image"]).is_file() for row in rows)
    assert Image.open(tmp_path / "exp" / rows[0]["image"]).size == (32, 32)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file where the export folder should go")
    with pytest.raises(SystemExit) as e:
        data.main(["export", "--out", str(tmp_path / "taken"), "--n", "2", "--image-size", "16"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "taken" in err and len(err.strip().splitlines()) == 1


def test_trim_padding_keeps_every_token_and_rounds_for_compile():
    P = data.PAD_ID
    tok = torch.full((3, 64), P)
    tok[0, :5], tok[1, :19], tok[2, :2] = 7, 7, 7           # the longest text: 19 tokens
    assert data.trim_padding(tok).shape == (3, 19)
    assert data.trim_padding(tok, multiple=16).shape == (3, 32)
    assert torch.equal(data.trim_padding(tok, multiple=16)[:, :19], tok[:, :19])
    full = torch.full((2, 64), 7)
    assert data.trim_padding(full, multiple=48).shape == (2, 64)   # never past the context
    assert data.trim_padding(torch.full((2, 64), P)).shape == (2, 1)   # all padding: one column


@pytest.mark.slow   # data.py show and export with noise, twice: `pytest -m slow`, CI's second step
def test_cli_show_and_export_with_report_noise(tmp_path):
    r = _cli("show", "--out", "noisy.png", "--n", "5", "--image-size", "64", "--report-noise", "0.5",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "reports with noise 0.5" in r.stdout
    w, h = plot.show_tile_size(64)
    assert Image.open(tmp_path / "noisy.png").size == (3 * w, 2 * h)
    r = _cli("export", "--out", "exp", "--n", "40", "--image-size", "16", "--report-noise", "0.5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "exp" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    noisy, clean = synthetic.training_reports(40, 0.5), synthetic.training_reports(40)
    assert [row["text"] for row in rows] == noisy["texts"] != clean["texts"]   # the noisy reports ...
    names = [";".join(n for j, n in enumerate(synthetic.FINDINGS) if noisy["labels"][i, j]) for i in range(40)]
    assert [row["labels"] for row in rows] == names                             # ... the true findings
    for bad in ("1.5", "-0.1", "nan"):
        r = _cli("show", "--out", "x.png", "--report-noise", bad, cwd=tmp_path)
        assert r.returncode == 2 and "--report-noise must be in [0, 1]" in r.stderr
    assert not (tmp_path / "x.png").exists()
