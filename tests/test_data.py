"""data.py: augmentation, report ids, the tokenizer and the data command line; each test pins a property
the rest of the project relies on (fast: small images). The manifests: test_manifests.py."""

import csv
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
from tools import plot  # noqa: E402
from synthetic import dataset as synthetic  # noqa: E402
from data import PAD_ID  # noqa: E402
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


def test_the_shift_range_scales_the_shifts_alone():
    """--augment-shift: the same draws, tx and ty scaled to the new range, the rest as the default."""
    p = data.augment_params(256, generator=torch.Generator().manual_seed(1))
    q = data.augment_params(256, generator=torch.Generator().manual_seed(1), translate=0.0625)
    for key in p:
        want = p[key] * (0.0625 / data.TRANSLATE) if key in ("tx", "ty") else p[key]
        torch.testing.assert_close(q[key], want, rtol=1e-6, atol=0)
    images = torch.rand(3, 1, 16, 16)
    torch.manual_seed(2)
    default = data.train_augment(images)
    torch.manual_seed(2)
    assert torch.equal(data.train_augment(images, translate=data.TRANSLATE), default)


def test_window_passes_the_shift_range_to_the_augmentation(monkeypatch):
    import train
    from plumbing import runtime
    seen = []
    monkeypatch.setattr(data, "train_augment", lambda images, translate: seen.append(translate) or images)
    pairs = {"images": torch.zeros(8, 1, 16, 16, dtype=torch.uint8), "tokens": torch.ones(8, 4, dtype=torch.long),
             "ids": torch.arange(8), "texts": ["a"] * 8}
    run = runtime.Run(0, 1, torch.device("cpu"), ddp=False)
    for extra, want in (([], data.TRANSLATE), (["--augment-shift", "0.0625"], 0.0625)):
        _, args = train.get_args(["--batch-size", "2", "--accum-steps", "2", *extra])
        train.window(pairs, 0, args, run)
        assert seen.pop() == want


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
