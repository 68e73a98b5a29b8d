"""Evaluation in train.py's precision: the model's forward passes run under autocast ("bf16",
"fp16") and nothing else does (the few-shot probe, the metrics, the bootstrap stay fp32), the
autocast state is what it was afterwards, and profile_step.py times the precision it says."""

import json

import pytest
import torch
import torch.nn.functional as F

import eval as ev
from data import train_tokenizer
from evaluation.protocols import embed_images, embed_texts, forward_precision, grounding_maps
from experiments import profile_step
from model import DualEncoder, make_config
from synthetic.dataset import CLASS_PROMPTS, render_synthetic

TEXTS = [p for prompts in CLASS_PROMPTS.values() for p in prompts]


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = DualEncoder(make_config("tiny", image_size=32, patch_size=8, vision_width=32,
                                    vision_layers=1, vision_heads=2, text_width=32, text_layers=1,
                                    text_heads=2, embed_dim=16, vocab_size=tokenizer.get_vocab_size()))
    return model, tokenizer


def record_autocast(model, monkeypatch):
    """Make encode_image and encode_text note the CPU autocast dtype they run under (None: off)."""
    seen = []
    for name in ("encode_image", "encode_text"):
        original = getattr(model, name)

        def noted(x, original=original, name=name):
            on = torch.is_autocast_enabled("cpu")
            seen.append((name, torch.get_autocast_dtype("cpu") if on else None))
            return original(x)
        monkeypatch.setattr(model, name, noted)
    return seen


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16)])
def test_embeddings_are_computed_in_the_precision_asked(tiny, monkeypatch, precision, dtype):
    model, tokenizer = tiny
    images = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    reference = embed_images(model, images, "cpu")
    seen = record_autocast(model, monkeypatch)
    got = embed_images(model, images, "cpu", batch_size=4, precision=precision)
    text = embed_texts(model, tokenizer, TEXTS[:5], "cpu", precision=precision)
    assert seen == [("encode_image", dtype)] * 2 + [("encode_text", dtype)]
    assert not torch.is_autocast_enabled("cpu")                 # as it was before the call
    assert got.dtype == text.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(6))
    cos = (got * reference).sum(-1)
    if dtype is None:
        torch.testing.assert_close(got, reference)
    else:   # rounded, so not equal, but the same directions
        assert not torch.equal(got, reference) and cos.min() > 0.99, cos


def test_nested_calls_leave_autocast_off(tiny):
    """grounding_maps calls embed_texts inside its own context: each builds a fresh one, so leaving
    the inner one does not leave autocast on (reusing one torch.autocast object would)."""
    model, tokenizer = tiny
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    reference = grounding_maps(model, tokenizer, images, TEXTS[:3], "cpu")
    maps = grounding_maps(model, tokenizer, images, TEXTS[:3], "cpu", precision="bf16")
    assert not torch.is_autocast_enabled("cpu")
    assert maps.shape == reference.shape == (3, 32, 32) and maps.dtype == torch.float32
    assert not torch.equal(maps, reference)
    assert F.cosine_similarity(maps.flatten(1), reference.flatten(1)).min() > 0.99


def test_an_unknown_precision_is_refused(tiny):
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16, got 'fp8'"):
        forward_precision(tiny[0], "fp8")


def test_evaluate_fits_the_probe_outside_autocast(tiny, monkeypatch):
    """Only the forward passes are in bf16: the few-shot probe (and so its numbers) sees fp32."""
    model, tokenizer = tiny
    probe_autocast = []
    fit = ev.few_shot_probes

    def noted(*args, **kwargs):
        probe_autocast.append(torch.is_autocast_enabled("cpu"))
        return fit(*args, **kwargs)
    monkeypatch.setattr(ev, "few_shot_probes", noted)
    seen = record_autocast(model, monkeypatch)
    settings = ev.EvalSettings(n_per_class=4, n_retrieval=10, seeds=(0,), shots=(1,), bootstrap=0,
                               precision="bf16")
    ev.evaluate(model, tokenizer, "cpu", 32, gr=False, settings=settings)
    assert probe_autocast == [False]
    assert seen and {dtype for _, dtype in seen} == {torch.bfloat16}


def test_profile_step_reports_the_precision_it_timed(tmp_path, capsys, monkeypatch):
    """profile_step times train.py's step in the precision it prints, with fp16's loss scaler."""
    scaled = []
    step = profile_step.msd_step

    def noted(*args, **kwargs):
        scaled.append(kwargs["scaler"] is not None)
        return step(*args, **kwargs)
    monkeypatch.setattr(profile_step, "msd_step", noted)
    monkeypatch.setattr(profile_step.synthetic, "render_synthetic",
                        lambda split, n, size, workers: render_synthetic(split, 16, size))
    out = tmp_path / "p.json"
    profile_step.main(["--batch-size", "4", "--accum-steps", "1", "--repeats", "1", "--warmup", "0",
                       "--precision", "fp16", "--json", str(out)])
    assert "cpu, fp16 (--precision fp16)" in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["precision"] == "fp16" and scaled == [True]
