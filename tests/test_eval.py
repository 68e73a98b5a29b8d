"""Tests for eval.py and evaluation/protocols.py: the protocols on a fake model whose embeddings we
choose, evaluate() and its intervals, and the command line end to end on a tiny checkpoint (the
metrics themselves: test_metrics.py)."""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as ev  # noqa: E402  (the repository's eval.py, not the builtin)
from evaluation import metrics  # noqa: E402
from evaluation.protocols import embed_images, retrieval, zero_shot  # noqa: E402
from data import tokenize, train_tokenizer  # noqa: E402
from model import DualEncoder, make_config  # noqa: E402
from synthetic.dataset import (CLASS_PROMPTS, EVAL_SEED, GROUNDING_CLASSES, GROUNDING_SEED,  # noqa: E402
                               SECOND_EVAL_SEED, TRAIN_SEED, ZERO_SHOT_CLASSES, render_synthetic)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -----------------------------------------------------------------------------
# zero_shot, retrieval and the embedding helpers, on a fake model whose embeddings we choose


class FakeModel(torch.nn.Module):
    """Has the interface eval.py uses (encode_image, encode_text, logit_scale, cfg), with
    embeddings chosen by the test: image i is a uint8 picture whose pixel (0, 0) holds i, and
    encode_image returns image_vectors[i]; a text's embedding is looked up by its token ids."""

    def __init__(self, tokenizer, text_vectors, image_vectors, scale=10.0, context_length=32):
        super().__init__()
        self.cfg = SimpleNamespace(context_length=context_length, in_channels=1)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        ids, _ = tokenize(tokenizer, list(text_vectors), context_length)
        vectors = F.normalize(torch.stack(list(text_vectors.values())), dim=-1)
        self.table = {tuple(row.tolist()): v for row, v in zip(ids, vectors)}
        self.image_vectors = F.normalize(image_vectors, dim=-1)
        self.calls = []   # (training, grad enabled) at every encode call

    def encode_image(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        code = (x[:, 0, 0, 0] * 255).round().long()   # eval.py must pass uint8 / 255
        return self.image_vectors[code]

    def encode_text(self, tokens):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return torch.stack([self.table[tuple(row.tolist())] for row in tokens])


def coded_images(n):
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images


@pytest.fixture(scope="module")
def word_tokenizer():
    texts = [p for prompts in CLASS_PROMPTS.values() for p in prompts]
    return train_tokenizer(texts + ["No acute cardiopulmonary process."], vocab_size=300)


def test_zero_shot_prompt_ensemble_temperature_and_mode(word_tokenizer):
    # Class 0 has two prompts, at (1, 1, 0) and (1, -1, 0): their normalised mean points along x.
    # Classes 1 and 2 have one prompt each, along y and z.
    a, b = CLASS_PROMPTS["cardiomegaly"][:2]
    c, d = CLASS_PROMPTS["edema"][0], CLASS_PROMPTS["pleural effusion"][0]
    text_vectors = {a: torch.tensor([1.0, 1.0, 0.0]), b: torch.tensor([1.0, -1.0, 0.0]),
                    c: torch.tensor([0.0, 1.0, 0.0]), d: torch.tensor([0.0, 0.0, 1.0])}
    prompts = {"big heart": [a, b], "edema": [c], "effusion": [d]}
    image_vectors = torch.tensor([[1.0, 0.8, 0.0],    # class 0, right
                                  [0.6, 1.0, 0.0],    # class 1, right only with the ensemble: the
                                                      # single prompt (1, 1, 0) would win it for 0
                                  [0.0, 0.2, 1.0],    # class 2, right
                                  [0.0, 1.0, 0.5]])   # class 2, but nearer class 1: wrong
    labels = torch.tensor([0, 1, 2, 2])
    model = FakeModel(word_tokenizer, text_vectors, image_vectors, scale=10.0)
    model.train()
    out = zero_shot(model, word_tokenizer, coded_images(4), labels, list(prompts), prompts, "cpu")

    assert out["accuracy"] == pytest.approx(0.75)
    expected = torch.softmax(10.0 * F.normalize(image_vectors, dim=-1) @ torch.eye(3), dim=-1)
    torch.testing.assert_close(out["probs"], expected)
    assert out["auc"] == pytest.approx(metrics.macro_auc_ovr(expected, labels))
    # Encoded in eval mode without gradients, and put back in training mode afterwards.
    assert model.calls and all(call == (False, False) for call in model.calls)
    assert model.training


def test_retrieval_directions_and_duplicate_reports(word_tokenizer):
    t0, t1 = CLASS_PROMPTS["edema"][0], CLASS_PROMPTS["edema"][1]
    t3 = CLASS_PROMPTS["atelectasis"][0]
    texts = [t0, t1, t0.upper(), t3]   # pairs 0 and 2 share a report (normalisation ignores case)
    e = torch.eye(4)
    text_vectors = {t0: e[0], t1: e[1], t0.upper(): e[0], t3: e[2]}
    image_vectors = torch.stack([e[0],                    # pair 0: right
                                 e[2] + 0.1 * e[1],       # pair 1: nearest text is 3, a miss
                                 e[0] + 0.05 * e[3],      # pair 2: nearest text is report 0 = its own
                                 e[2]])                   # pair 3: right
    model = FakeModel(word_tokenizer, text_vectors, image_vectors)
    r = retrieval(model, word_tokenizer, coded_images(4), texts, "cpu")
    # Image -> text: images 0, 2, 3 find their report at rank 1; image 1 only at rank 2.
    assert r["i2t_r1"] == pytest.approx(3 / 4) and r["i2t_r5"] == pytest.approx(1.0)
    # Text -> image: text 1 finds image 1 (the only one with any e[1]); text 2's nearest image is
    # image 0, whose report is identical to text 2's, so it counts as correct: all four hit.
    assert r["t2i_r1"] == pytest.approx(1.0)
    assert set(r) == {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}


def test_quick_evaluate_without_zero_shot_set_runs_retrieval(word_tokenizer):
    """train.py's quick check with a --retrieval-manifest alone: evaluate(zs=False, quick=True)
    returns the retrieval numbers of that set and says what they were measured on."""
    texts = [CLASS_PROMPTS["edema"][0], CLASS_PROMPTS["atelectasis"][0], CLASS_PROMPTS["cardiomegaly"][0]]
    e = torch.eye(3)
    model = FakeModel(word_tokenizer, dict(zip(texts, e)), torch.stack([e[0], e[2], e[1]]))
    ret = {"images": coded_images(3), "texts": texts, "source": "pairs.csv"}
    res = ev.evaluate(model, word_tokenizer, "cpu", 4, zs=False, ret=ret, quick=True)
    assert res == {"retrieval": retrieval(model, word_tokenizer, ret["images"], texts, "cpu"),
                   "evaluated_on": {"retrieval": {"source": "pairs.csv", "pairs": 3}}}
    assert res["retrieval"]["i2t_r1"] == pytest.approx(1 / 3)   # images 1 and 2 swap their texts


def small_benchmark(word_tokenizer):
    """A fake model on 3 classes x 6 zero-shot images and 6 retrieval pairs, its embeddings noisy
    enough that every metric is neither 0 nor 1."""
    names = ["edema", "atelectasis", "cardiomegaly"]
    prompts = {c: [CLASS_PROMPTS[c][0]] for c in names}
    texts = [CLASS_PROMPTS[c][i] for c in names for i in (0, 1)]
    e = torch.eye(8)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(6)                                          # (18,)
    image_vectors = e[labels] + 0.8 * torch.randn(18, 8, generator=g)
    text_vectors = {t: e[i // 2] + 0.3 * e[3 + i % 5] for i, t in enumerate(texts)}
    model = FakeModel(word_tokenizer, text_vectors, image_vectors)
    zs = {"images": coded_images(18), "labels": labels, "classes": names, "prompts": prompts,
          "source": "classes.csv"}
    ret = {"images": coded_images(6), "texts": texts, "source": "pairs.csv"}
    return model, zs, ret


def test_evaluate_intervals_are_the_bootstrap_of_its_own_numbers(word_tokenizer):
    model, zs, ret = small_benchmark(word_tokenizer)
    kw = dict(zs=zs, ret=ret, gr=False)
    settings = ev.EvalSettings(shots=(1, 2), seeds=(0, 1), bootstrap=200, bootstrap_seed=7)
    res = ev.evaluate(model, word_tokenizer, "cpu", 4, settings=settings, **kw)
    ci = res["ci95"]
    assert (ci["resamples"], ci["seed"]) == (200, 7)
    # zero-shot: one draw of the 18 images for accuracy, AUC and the probes
    W = metrics.bootstrap_weights(18, 200, seed=7)
    z = zero_shot(model, word_tokenizer, zs["images"], zs["labels"], zs["classes"], zs["prompts"], "cpu")
    hits = z["probs"].argmax(1) == zs["labels"]
    assert ci["zero_shot"] == {
        "accuracy": metrics.ci95(metrics.weighted_mean(hits, W)),
        "auc": metrics.ci95(metrics.weighted_macro_auc_ovr(z["probs"], zs["labels"], W))}
    features = embed_images(model, zs["images"], "cpu")
    probes = metrics.few_shot_probes(features, zs["labels"], (1, 2), (0, 1))
    assert ci["few_shot"] == {k: metrics.ci95(v) for k, v in metrics.weighted_few_shot(probes, W).items()}
    assert res["few_shot"] == metrics.few_shot(features, zs["labels"], (1, 2), (0, 1))
    # retrieval: one draw of the 6 pairs for both directions, each query against all 6 candidates
    recalls, per_query = retrieval(model, word_tokenizer, ret["images"], ret["texts"], "cpu", hits=True)
    assert res["retrieval"] == recalls
    W = metrics.bootstrap_weights(6, 200, seed=7)
    assert ci["retrieval"] == {key: metrics.ci95(metrics.weighted_mean(h, W)) for key, h in per_query.items()}
    assert any(hi > lo for part in ("zero_shot", "few_shot", "retrieval") for lo, hi in ci[part].values())
    # the same seed gives the same intervals, another seed other ones
    assert ev.evaluate(model, word_tokenizer, "cpu", 4, settings=settings, **kw) == res
    other = ev.evaluate(model, word_tokenizer, "cpu", 4, settings=replace(settings, bootstrap_seed=8),
                        **kw)
    assert other["ci95"]["zero_shot"] != ci["zero_shot"]
    assert {k: v for k, v in other.items() if k != "ci95"} == {k: v for k, v in res.items() if k != "ci95"}
    # bootstrap=0: no intervals; quick=True (train.py's periodic check): none either
    assert "ci95" not in ev.evaluate(model, word_tokenizer, "cpu", 4,
                                     settings=replace(settings, bootstrap=0), **kw)
    assert "ci95" not in ev.evaluate(model, word_tokenizer, "cpu", 4, quick=True, settings=settings, **kw)


def test_format_table_shows_each_interval_beside_its_value():
    results = {"zero_shot": {"accuracy": 0.92, "auc": 0.97}, "few_shot": {"1": 0.8},
               "retrieval": {"i2t_r1": 0.25},
               "ci95": {"zero_shot": {"accuracy": [0.9031, 0.9364], "auc": [0.96, 0.98]},
                        "few_shot": {"1": [0.77, 0.83]}, "retrieval": {"i2t_r1": [0.2, 0.3]},
                        "resamples": 1000, "seed": 0}}
    lines = ev.format_table(results).splitlines()
    assert lines[0].split() == ["task", "metric", "value", "95%", "CI"]
    assert lines[2].startswith("zero-shot") and lines[2].endswith("  0.920  [0.903, 0.936]")
    assert lines[4].endswith("  0.800  [0.770, 0.830]") and lines[5].endswith("  0.250  [0.200, 0.300]")
    assert lines[-1] == ("95% CI: percentile bootstrap, 1000 resamples of the test items (seed 0); "
                         "few-shot probes not refit")
    # without intervals: no interval column and no footnote
    plain = ev.format_table({k: v for k, v in results.items() if k != "ci95"}).splitlines()
    assert plain[0].split() == ["task", "metric", "value"] and plain[2].endswith("  0.920")
    assert len(plain) == len(lines) - 1


def test_embed_images_batches_and_restores_eval_mode():
    model = DualEncoder(make_config("tiny", image_size=16, patch_size=8, vision_width=32,
                                    vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                                    text_heads=2, embed_dim=8, vocab_size=50))
    model.eval()
    images = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    small = embed_images(model, images, "cpu", batch_size=2)      # batches of 2, 2, 1
    whole = model.encode_image(images.float() / 255)
    torch.testing.assert_close(small, whole.detach(), rtol=1e-4, atol=1e-5)
    assert not model.training   # it was in eval mode, so it stays there


# -----------------------------------------------------------------------------
# The command line, on a tiny checkpoint in train.py's format


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A folder with ckpt.pt and tokenizer.json as train.py writes them (untrained weights)."""
    out = tmp_path_factory.mktemp("run")
    texts = render_synthetic("train", 40, 32)["texts"]
    tokenizer = train_tokenizer(texts + [p for ps in CLASS_PROMPTS.values() for p in ps], 400)
    cfg = make_config("tiny", image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                      vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16,
                      vocab_size=tokenizer.get_vocab_size())
    torch.manual_seed(0)
    student, teacher = DualEncoder(cfg), DualEncoder(cfg)
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "step": 3,
                "config": {"model": asdict(cfg), "train": {"lr": 1e-3}}}, out / "ckpt.pt")
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def check_json_structure(results, shots=("1", "2", "4", "8", "16"), grounding=False):
    more = {"grounding"} if grounding else set()
    assert set(results) == {"zero_shot", "few_shot", "retrieval", "ci95", "evaluated_on"} | more
    assert set(results.pop("evaluated_on")) == {"zero_shot", "retrieval"} | more
    if grounding:
        g = results.pop("grounding")
        assert set(g) == {"per_class", "overall", "class_mean", "no_place", "random_grid", "unlocated",
                          "contrast", "contrast_unlocated", "text_prior", "text_prior_unlocated", "grid_ceiling"}
        assert g["text_prior"]["seed"] == GROUNDING_SEED + 500 and g["random_grid"]["grid"] == 4
        assert set(g["per_class"]) == set(GROUNDING_CLASSES) and g["overall"]["n"] == 250
    # ci95 mirrors the numbers: a [lo, hi] for each, from 1000 resamples with seed 0
    ci = results.pop("ci95")
    assert (ci.pop("resamples"), ci.pop("seed")) == (1000, 0)
    assert {part: list(v) for part, v in ci.items()} == {part: list(v) for part, v in results.items()}
    for part, values in results.items():
        for key, value in values.items():
            lo, hi = ci[part][key]
            assert isinstance(lo, float) and isinstance(hi, float) and 0.0 <= lo <= hi <= 1.0, (part, key)
            if part != "few_shot" and key != "auc":   # a mean (accuracy, recall) lies in its interval
                assert lo <= value <= hi, (part, key, value, lo, hi)
    assert set(results["zero_shot"]) == {"accuracy", "auc"}
    assert list(results["few_shot"]) == list(shots)
    assert set(results["retrieval"]) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    values = [v for part in results.values() for v in part.values()]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values), results


def test_cli_json_on_the_synthetic_benchmark(checkpoint, tmp_path):
    out = tmp_path / "results.json"
    r = run_cli("--checkpoint", checkpoint / "ckpt.pt", "--use-teacher", "--json", out,
                "--n-per-class", 20, "--n-retrieval", 30, "--seeds", 2, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert results["evaluated_on"] == {
        "zero_shot": {"source": "synthetic", "images": 5 * 20, "classes": list(ZERO_SHOT_CLASSES),
                      "seed": EVAL_SEED},
        "retrieval": {"source": "synthetic", "pairs": 30, "seed": EVAL_SEED},
        "grounding": {"source": "synthetic", "phrases": 250, "seed": GROUNDING_SEED}}
    check_json_structure(results, grounding=True)
    assert "zero-shot" in r.stdout and "Recall@10" in r.stdout   # the table was printed


def test_cli_second_eval_seed_evaluates_other_images(checkpoint, tmp_path):
    """--eval-seed renders another set: the same untrained model scores differently on it, and
    the JSON says which set it was."""
    common = ["--checkpoint", str(checkpoint), "--n-per-class", "10", "--n-retrieval", "20",
              "--seeds", "1", "--device", "cpu"]
    results = {}
    for seed in (EVAL_SEED, SECOND_EVAL_SEED):
        ev.main(common + ["--eval-seed", str(seed), "--json", str(tmp_path / f"{seed}.json")])
        results[seed] = json.loads((tmp_path / f"{seed}.json").read_text())
        assert results[seed]["evaluated_on"]["zero_shot"]["seed"] == seed
        assert results[seed]["evaluated_on"]["retrieval"]["seed"] == seed
    assert results[EVAL_SEED]["zero_shot"] != results[SECOND_EVAL_SEED]["zero_shot"]


def test_cli_bootstrap_0_leaves_the_intervals_out(checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    ev.main(["--checkpoint", str(checkpoint), "--n-per-class", "10", "--n-retrieval", "20",
             "--seeds", "1", "--device", "cpu", "--bootstrap", "0", "--json", str(out)])
    assert set(json.loads(out.read_text())) == {"zero_shot", "few_shot", "retrieval", "grounding",
                                                     "evaluated_on"}
    printed = capsys.readouterr().out
    table = printed[printed.index("task "):]
    assert "Recall@10" in table and "95% CI" not in table and "[" not in table
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(checkpoint), "--bootstrap", "-1", "--device", "cpu"])
    assert exit_info.value.code == 2 and "--bootstrap" in capsys.readouterr().err


@pytest.mark.parametrize("asked, said", [("auto", "on cpu, fp32 (auto: fp32 on cpu)"),
                                         ("bf16", "on cpu, bf16 (--precision bf16)")])
def test_cli_says_its_precision_and_why(checkpoint, capsys, asked, said):
    ev.main(["--checkpoint", str(checkpoint), "--n-per-class", "10", "--n-retrieval", "20",
             "--seeds", "1", "--device", "cpu", "--bootstrap", "0", "--precision", asked])
    assert said in capsys.readouterr().out


def test_cli_eval_seed_of_the_training_set_exits_2(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(checkpoint), "--eval-seed", str(TRAIN_SEED), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and "--eval-seed" in err and str(TRAIN_SEED) in err


# The error cases call main() in this process (starting Python and torch again costs seconds); a
# traceback would surface here as an exception other than SystemExit.


def test_cli_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(missing), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and str(missing) in err


def test_cli_missing_tokenizer_names_its_path(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert str(tmp_path / "tokenizer.json") in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cli_truncated_or_garbage_checkpoint_is_one_line_without_torch_advice(checkpoint, tmp_path,
                                                                               capsys, damage):
    """A copy cut short, or a file that is no checkpoint at all: one line naming the file and what
    is wrong, and never torch's advice to reload with weights_only=False (which lets a file run
    code)."""
    good = (checkpoint / "ckpt.pt").read_bytes()
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(good[:len(good) // 2] if damage == "truncated" else os.urandom(len(good) // 2))
    (tmp_path / "tokenizer.json").write_bytes((checkpoint / "tokenizer.json").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert str(bad) in err and "weights_only" not in err
    assert ("is truncated" if damage == "truncated" else "is not a checkpoint of this project") in err


def write_class_manifest(folder, labels):
    """A few small random PNGs (not the model's size, so they are resized) and their manifest."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    (folder / "img").mkdir(exist_ok=True)
    rows = ["image,label"]
    for i, label in enumerate(labels):
        pixels = torch.randint(0, 256, (40, 48), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{label}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def test_cli_eval_manifest_without_prompts_exits_2(tmp_path, capsys):
    manifest = write_class_manifest(tmp_path, ["edema", "nodule"])
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(tmp_path), "--eval-manifest", str(manifest)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and str(manifest) in err and "--prompts" in err


def test_cli_label_missing_from_prompt_file_exits_2(checkpoint, tmp_path, capsys):
    manifest = write_class_manifest(tmp_path, ["edema", "pneumothorax"])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"edema": ["There is pulmonary edema."],
                                   "cardiomegaly": ["The heart is enlarged."]}))
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--checkpoint", str(checkpoint), "--eval-manifest", str(manifest),
                 "--prompts", str(prompts), "--device", "cpu", "--data-cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and str(manifest) in err and "pneumothorax" in err


def test_cli_manifests_end_to_end(checkpoint, tmp_path):
    # 3 classes x 4 images: 1- and 2-shot leave images to test on, 4-shot and up cannot.
    classes = ["edema", "cardiomegaly", "pleural effusion"]
    manifest = write_class_manifest(tmp_path, [c for c in classes for _ in range(4)])
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({c: CLASS_PROMPTS[c][:2] for c in classes}))
    # Retrieval pairs reuse the same pictures; two rows share a report.
    texts = [CLASS_PROMPTS[c][0] for c in classes for _ in range(4)]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,text\n" + "".join(f"img/{i}.png,{t}\n" for i, t in enumerate(texts)))
    out, grid = tmp_path / "results.json", tmp_path / "grid.png"
    ev.main(["--checkpoint", str(checkpoint), "--eval-manifest", str(manifest),
             "--prompts", str(prompts), "--retrieval-manifest", str(pairs), "--json", str(out),
             "--show", str(grid), "--device", "cpu", "--data-cache", str(tmp_path / "cache")])
    results = json.loads(out.read_text())
    # the numbers say what they were measured on: the user's classes and pairs, nothing synthetic
    assert results["evaluated_on"] == {
        "zero_shot": {"source": str(manifest), "images": 12, "classes": classes},
        "retrieval": {"source": str(pairs), "pairs": 12}}
    check_json_structure(results, shots=("1", "2"))
    # both manifests were decoded into the cache (and read from it: tests/test_data.py checks the
    # cache against a decode into memory)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    from PIL import Image
    with Image.open(grid) as im:   # a row per class, 4 pictures per row
        assert im.size[0] == 4 * 160 and im.size[1] == 3 * (160 + 4 * 13 + 6)
