"""model.py: shapes, norms, padding invariance, batch independence, reproducibility, presets."""

import pytest
import torch

from model import PAD_ID, DualEncoder, ModelConfig, PRESETS, make_config


def tiny_config(**kw):
    base = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                vocab_size=50, context_length=16, text_width=32, text_layers=2, text_heads=2,
                embed_dim=24)
    base.update(kw)
    return ModelConfig(**base)


def random_tokens(B, L, lengths, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (B, L), generator=g)
    for i, n in enumerate(lengths):
        tokens[i, n:] = PAD_ID
    return tokens


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 32), (1, 48)])
def test_shapes_and_unit_norm(channels, size):
    torch.manual_seed(0)
    model = DualEncoder(tiny_config(in_channels=channels, image_size=size))
    img = model.encode_image(torch.rand(3, channels, size, size))
    txt = model.encode_text(random_tokens(3, 10, [10, 4, 1]))
    assert img.shape == (3, 24) and txt.shape == (3, 24)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    i2, t2, s = model(torch.rand(2, channels, size, size), random_tokens(2, 5, [5, 3]))
    assert i2.shape == (2, 24) and t2.shape == (2, 24)
    assert s.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_padding_does_not_change_text_embedding():
    torch.manual_seed(0)
    model = DualEncoder(tiny_config()).double()
    short = random_tokens(2, 6, [6, 3])
    padded = torch.cat([short, torch.full((2, 10), PAD_ID)], dim=1)   # 10 more padding tokens
    torch.testing.assert_close(model.encode_text(short), model.encode_text(padded), rtol=0, atol=1e-12)
    # and the trailing pads inside the first batch did not matter either: row 1 alone, unpadded
    torch.testing.assert_close(model.encode_text(short[1:, :3]), model.encode_text(short)[1:],
                               rtol=0, atol=1e-12)


def test_batch_independence():
    torch.manual_seed(0)
    model = DualEncoder(tiny_config()).double()
    images = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    tokens = random_tokens(4, 12, [12, 7, 2, 9])
    full_i, full_t = model.encode_image(images), model.encode_text(tokens)
    other_i = model.encode_image(torch.cat([images[2:3], torch.rand(5, 1, 32, 32, dtype=torch.float64)]))
    other_t = model.encode_text(torch.cat([tokens[2:3], random_tokens(5, 12, [3] * 5, seed=1)]))
    torch.testing.assert_close(other_i[0], full_i[2], rtol=0, atol=1e-12)
    torch.testing.assert_close(other_t[0], full_t[2], rtol=0, atol=1e-12)


def test_seeded_model_is_reproducible_and_seed_matters():
    def build(seed):
        torch.manual_seed(seed)
        return DualEncoder(tiny_config())
    a, b, c = build(3), build(3), build(4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.visual.patch_embed.weight, c.visual.patch_embed.weight)


def test_logit_scale_clamp():
    model = DualEncoder(tiny_config())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


def test_config_errors_name_the_values():
    with pytest.raises(ValueError, match="image_size 30 is not divisible by patch_size 8"):
        tiny_config(image_size=30)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        make_config("huge")
    model = DualEncoder(tiny_config())
    with pytest.raises(ValueError, match="longer than context_length 16"):
        model.encode_text(torch.ones(1, 17, dtype=torch.long))


def test_presets_build_with_overrides():
    assert set(PRESETS) >= {"tiny", "small"}
    cfg = make_config("small", image_size=128, in_channels=3)
    assert (cfg.image_size, cfg.in_channels, cfg.vision_width, cfg.vision_layers) == (128, 3, 384, 12)
