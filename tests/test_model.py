"""model.py: shapes, norms, padding invariance, batch independence, reproducibility, presets."""

import pytest
import torch

from model import PAD_ID, PRESETS, DualEncoder, ModelConfig, local_mask, make_config


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
    assert not torch.equal(a.visual.patch_embed.layers[0].weight, c.visual.patch_embed.layers[0].weight)


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
    with pytest.raises(ValueError, match="stem must be 'conv' or 'patch', got 'resnet'"):
        tiny_config(stem="resnet")
    with pytest.raises(ValueError, match=r"patch_size must be a power of two \(got 6\)"):
        tiny_config(image_size=36, patch_size=6)
    tiny_config(image_size=36, patch_size=6, stem="patch")   # one p x p convolution takes any p
    with pytest.raises(ValueError, match="pool must be 'max', 'mean', 'attn' or 'cls', got 'avg'"):
        tiny_config(pool="avg")


@pytest.mark.parametrize("patch_size,stages", [(4, 2), (8, 3), (16, 4)])
def test_conv_stem_gives_the_patch_grid(patch_size, stages):
    """The conv stem must hand the transformer the same (side/p)^2 tokens of the same width as
    ViT's patch convolution, halving the image once per stage, and see the whole patch: a token's
    receptive field covers its own p x p patch, so changing one pixel of a patch changes it."""
    cfg = tiny_config(image_size=64, patch_size=patch_size)
    stem = DualEncoder(cfg).visual.patch_embed
    strided = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == stages
    x = torch.randn(2, 1, 64, 64)
    out = stem(x)
    assert out.shape == (2, cfg.vision_width, 64 // patch_size, 64 // patch_size)
    y = x.clone()
    y[:, :, patch_size - 1, patch_size - 1] += 1.0       # the far corner of patch (0, 0)
    assert not torch.allclose(stem(y)[:, :, 0, 0], out[:, :, 0, 0])
    patch = DualEncoder(tiny_config(image_size=64, patch_size=patch_size, stem="patch"))
    assert patch.visual.patch_embed(x).shape == out.shape


def test_max_pool_is_the_channelwise_maximum_over_patches():
    """pool="max": the image vector is, channel by channel, the largest final patch state; no
    class token exists (DDP would reject a parameter that gets no gradient). The reference is
    computed here from the module's parts."""
    torch.manual_seed(0)
    vit = DualEncoder(tiny_config(pool="max")).visual
    assert vit.cls_token is None and vit.pos_embed.shape == (1, 16, 32)   # (32 / 8)^2 patches
    images = torch.rand(2, 1, 32, 32)
    x = vit.patch_embed(images).flatten(2).transpose(1, 2) + vit.pos_embed
    for block in vit.blocks:
        x = block(x)
    states = vit.ln_final(x)                                            # (2, 16, 32)
    torch.testing.assert_close(vit(images), states.max(dim=1).values)
    # a bright spot in one patch raises channels there; the average of 16 would barely move
    spot = images.clone()
    spot[:, :, :8, :8] += 1.0
    assert not torch.allclose(vit(spot), vit(images))


def test_attn_pool_is_a_learned_weighted_mean_of_the_patches():
    """pool="attn": it starts as the mean (the scorer's last layer is zero), and with a scorer that
    favours one patch's states the image vector moves to that patch; the weights are a softmax."""
    torch.manual_seed(0)
    vit = DualEncoder(tiny_config(pool="attn")).visual
    images = torch.rand(2, 1, 32, 32)
    states = vit.tokens(images)                                          # (2, 16, 32)
    torch.testing.assert_close(vit(images), states.mean(dim=1))
    with torch.no_grad():                     # score = 20 tanh(the first hidden unit)
        vit.attn_pool[-1].weight.zero_()
        vit.attn_pool[-1].weight[0, 0] = 20.0
    score = 20 * torch.tanh(vit.attn_pool[0](states)[..., 0])            # (2, 16)
    weights = torch.exp(score) / torch.exp(score).sum(1, keepdim=True)
    torch.testing.assert_close(vit.patch_weights(states), weights)
    torch.testing.assert_close(vit(images), (weights[..., None] * states).sum(1))
    assert weights.max() > 4 / 16              # no longer the mean
    mean = DualEncoder(tiny_config(pool="mean")).visual
    assert mean.attn_pool is None              # no unused parameters for DDP


def test_cls_pool_reads_the_class_token():
    """pool="cls": ViT's class token, prepended before the positions are added; its final state
    is the representation, so changing the class token's parameter changes every image vector."""
    torch.manual_seed(0)
    vit = DualEncoder(tiny_config(pool="cls")).visual
    assert vit.cls_token.shape == (1, 1, 32) and vit.pos_embed.shape == (1, 17, 32)
    images = torch.rand(2, 1, 32, 32)
    x = vit.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(2, -1, -1), x], dim=1) + vit.pos_embed
    for block in vit.blocks:
        x = block(x)
    torch.testing.assert_close(vit(images), vit.ln_final(x[:, 0]))


def test_presets_build_with_overrides():
    assert set(PRESETS) >= {"tiny", "small"}
    cfg = make_config("small", image_size=128, in_channels=3)
    assert (cfg.image_size, cfg.in_channels, cfg.vision_width, cfg.vision_layers) == (128, 3, 384, 12)


def test_conv_stem_convolutions_get_he_init():
    """The stem's 3x3 convolutions sit before GroupNorms, which make their gradient scale as
    1 / |w|: they must not get the transformers' std 0.02, but sqrt(2 / fan_in)."""
    torch.manual_seed(0)
    stem = DualEncoder(tiny_config(image_size=64, vision_width=64)).visual.patch_embed
    convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs[:-1]:                              # the 3x3 stages
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)
    assert convs[-1].weight.std().item() == pytest.approx(0.02, rel=0.15)   # the 1x1: no norm after


def test_registers_are_attended_to_but_never_pooled():
    """--registers R: R more tokens in the ViT that change the patches' states (through attention)
    but are not patches: patch_states and the pooling see g * g tokens, and the shares still add
    up to the score."""
    cfg = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
               text_width=32, text_layers=1, text_heads=2, embed_dim=16, vocab_size=50)
    torch.manual_seed(0)
    plain = DualEncoder(make_config("tiny", **cfg)).double().eval()
    torch.manual_seed(0)
    more = DualEncoder(make_config("tiny", registers=3, **cfg)).double().eval()
    assert more.visual.register_tokens.shape == (1, 3, 32)
    missing = more.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["visual.register_tokens"]          # otherwise the same weights
    images, text = torch.rand(2, 1, 32, 32, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        assert more.patch_states(images).shape == plain.patch_states(images).shape == (2, 16, 32)
        assert not torch.allclose(more.patch_states(images), plain.patch_states(images))
        cosine = (more.encode_image(images) * torch.nn.functional.normalize(text, dim=-1)).sum(-1)
        torch.testing.assert_close(more.patch_shares(images, text).sum(1), cosine, rtol=0, atol=1e-12)
        more.visual.register_tokens.zero_()
        more.visual.n_registers = 0                         # no registers: the plain model again
        more.visual.register_tokens = None
        torch.testing.assert_close(more.patch_states(images), plain.patch_states(images))


def test_an_attention_window_keeps_a_patch_to_its_neighbourhood():
    """attention_window = 3 with one layer and the patch stem (no overlap between patches): changing
    patch (0, 0) changes exactly the patches within one row and column of it, and nothing else."""
    cfg = dict(image_size=32, patch_size=8, stem="patch", vision_width=32, vision_layers=1,
               vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16, vocab_size=50)
    torch.manual_seed(0)
    model = DualEncoder(make_config("tiny", attention_window=3, **cfg)).double().eval()
    image = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    other = image.clone()
    other[..., :8, :8] = torch.rand(8, 8, dtype=torch.float64)
    with torch.no_grad():
        moved = (model.patch_states(image) - model.patch_states(other)).abs().amax(-1).view(4, 4)
    near = torch.zeros(4, 4, dtype=torch.bool)
    near[:2, :2] = True
    assert (moved[near] > 1e-6).all() and (moved[~near] == 0).all()
    # a class token and registers see everything and are seen by everything
    mask = local_mask(4, 1, cls=True, registers=2)
    assert mask.shape == (19, 19) and mask[0].all() and mask[:, 0].all() and mask[-2:].all()
    assert not mask[1, 1 + 15]                       # patch (0, 0) does not see patch (3, 3)
    # W = 1: each patch on its own, the same stem output changes its patch alone
    alone = DualEncoder(make_config("tiny", attention_window=1, **cfg)).double().eval()
    with torch.no_grad():
        moved = (alone.patch_states(image) - alone.patch_states(other)).abs().amax(-1).view(4, 4)
    assert moved[0, 0] > 1e-6 and (moved.flatten()[1:] == 0).all()
    for bad in (2, -1):
        with pytest.raises(ValueError, match=f"attention_window must be 0 \\(every patch\\) or odd, got {bad}"):
            make_config("tiny", attention_window=bad)
