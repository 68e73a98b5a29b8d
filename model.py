"""A small ViT and a small text transformer, trained CLIP-style into one embedding space.

The dual encoder is CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision") at a size a laptop can train:

    image (B, C, H, W) --ViT--> (B, vision_width) --linear--> (B, D) --L2--> image embedding
    tokens (B, L)      --text transformer--> (B, text_width) --linear--> (B, D) --L2--> text embedding

and `logit_scale`, the log of the inverse temperature s = exp(logit_scale) that multiplies the
cosine similarities before the softmax. Like CLIP it starts at s = 1/0.07 and is clamped to at
most 100 after every optimizer step (`clamp_logit_scale`).

Depends on torch and the standard library only, so this file can be copied out on its own.
"""

import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0  # the tokenizer pads with id 0; the text encoder masks those positions out


@dataclass
class ModelConfig:
    image_size: int = 64      # square images; must be divisible by patch_size
    patch_size: int = 8
    stem: str = "conv"        # "conv": stride-2 3x3 convs (Xiao et al. 2021); "patch": one p x p conv
    pool: str = "max"         # image vector: "max", "mean" or "attn" (learned weights) over patches, or "cls"
    registers: int = 0        # extra learned tokens that every patch can attend to, never pooled
    attention_window: int = 0  # odd W > 0: a patch attends to the W x W patches around it; 0: all
    in_channels: int = 1      # 1 for grayscale radiographs, 3 for RGB
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vocab_size: int = 2048
    context_length: int = 64  # longest token sequence (learned position table size)
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    embed_dim: int = 128      # D, the shared embedding size
    mlp_ratio: int = 4

    def __post_init__(self):
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size "
                             f"{self.patch_size}: pick an image size that is a multiple of it")
        if self.stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {self.stem!r}")
        if self.attention_window < 0 or (self.attention_window and self.attention_window % 2 == 0):
            raise ValueError(f"attention_window must be 0 (every patch) or odd, got {self.attention_window}")
        if self.pool not in ("max", "mean", "attn", "cls"):
            raise ValueError(f"pool must be 'max', 'mean', 'attn' or 'cls', got {self.pool!r}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"the conv stem halves the image log2(patch_size) times, so patch_size "
                             f"must be a power of two (got {self.patch_size}); or use stem='patch'")
        for name in ("vision", "text"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads != 0:
                raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")


# Named sizes. "tiny" trains in minutes on 2 CPU cores; "small" is ViT-S-like (width 384, 12 layers,
# 6 heads) for a consumer GPU. Parameter counts are printed by `python model.py` (see README).
PRESETS = {
    "tiny": dict(image_size=64, patch_size=8, vision_width=128, vision_layers=4, vision_heads=4,
                 text_width=128, text_layers=3, text_heads=4, embed_dim=128, context_length=64),
    "small": dict(image_size=224, patch_size=16, vision_width=384, vision_layers=12, vision_heads=6,
                  text_width=384, text_layers=6, text_heads=6, embed_dim=256, context_length=128),
}
# `python model.py` prints each preset's parameter count at ModelConfig's vocabulary of 2048 (the
# --vocab-size cap). train.py builds the model with the tokenizer's own vocabulary, which is smaller
# on a small corpus: 276 words on the synthetic reports, so the default run's tiny model has 1.58M
# parameters where `python model.py` prints 1.81M (the README's table gives both).


def make_config(preset="tiny", **overrides):
    """The preset's config with some fields replaced (e.g. image_size=128, in_channels=3)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


class Attention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention (flash / memory-efficient
    kernels on GPUs, a plain implementation on the CPU)."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, key_mask=None, pair_mask=None):
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        # key_mask (B, L) is True where a token may be attended to; broadcast over heads and queries.
        # pair_mask (L, L) is True where query i may attend to key j, the same for every image.
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        if pair_mask is not None:
            attn_mask = pair_mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, L, W/heads)
        return self.proj(y.transpose(1, 2).reshape(B, L, W))


class Block(nn.Module):
    """Pre-norm transformer block (as in ViT and GPT-2): x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width, heads, mlp_ratio):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x, key_mask=None, pair_mask=None):
        x = x + self.attn(self.ln1(x), key_mask, pair_mask)
        return x + self.mlp(self.ln2(x))


class ConvStem(nn.Module):
    """Patches embedded by log2(p) stride-2 3x3 convolutions instead of one p x p convolution:
    Xiao et al. 2021, "Early Convolutions Help Transformers See Better". Same output grid and width
    as the patch convolution, about a tenth more compute at the tiny preset; Xiao et al. found it
    makes ViT training faster to converge and far less sensitive to the learning rate and the
    optimizer. Channels double at each stage up to the width; GroupNorm with one group normalises
    each image on its own, so no statistics are shared across the batch (a
    BatchNorm would leak which pairs sit together into the contrastive loss, and the teacher would
    need its running statistics too)."""

    def __init__(self, in_channels, width, patch_size):
        super().__init__()
        n = patch_size.bit_length() - 1                       # stride-2 stages: 8 -> 3, 16 -> 4
        chans = [in_channels] + [max(1, width >> (n - i)) for i in range(1, n + 1)]
        layers = []
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(1, c_out), nn.GELU()]
        layers.append(nn.Conv2d(chans[-1], width, 1))         # mix channels once more, as ViT_C does
        self.layers = nn.Sequential(*layers)

    @torch.no_grad()
    def reset_parameters(self):
        """He initialisation for the 3x3 convolutions. Each is followed by a GroupNorm, which makes
        its output independent of the weights' scale, so the gradient scales as 1 / |w| and Adam's
        step, about lr per weight, changes a weight of the transformers' std 0.02 by a large
        fraction at every step; std sqrt(2 / fan_in) keeps that fraction near lr."""
        for m in self.layers:
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, images):
        return self.layers(images)                            # (B, width, H/p, W/p)


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021): an (H/p, W/p) grid of patch tokens from the stem, learned
    positions, pre-norm blocks, then one vector per image:

    - pool="max" (default): the maximum over the patch tokens' final states, channel by channel.
      A finding occupies a few patches of a radiograph; a maximum keeps a channel that fires on
      one patch as strong as if it fired everywhere, while an average (or a class token, which
      attends about evenly to every patch at initialisation) dilutes it by the dozens of healthy
      patches around it. Wang et al. 2017 (ChestX-ray8) pool CNN maps with a soft maximum
      (log-sum-exp) for the same reason. On the synthetic set it is what lets the small findings
      (atelectasis, consolidation, effusion) be learnt within a CPU budget: see README.
    - pool="mean": the mean of the patch tokens' final states (BioViL's image vector is the mean of
      its projected patches, the same thing: the projection is linear).
    - pool="attn": a weighted mean of the patch tokens' final states, the weights a softmax over
      the patches of a small MLP's score of each (attention-based multiple-instance pooling, Ilse et
      al. 2018). It starts as the mean (the MLP's last layer is zero) and can learn to weigh the few
      abnormal patches above the healthy ones, so a small finding is not diluted; the image vector
      is still a sum of per-patch terms, so the map is the score's exact split.
    - pool="cls": ViT's and CLIP's class token, whose final state is the representation.

    registers > 0 appends that many learned tokens after the patches (Darcet et al. 2024, "Vision
    Transformers Need Registers"): attention can keep global information there rather than in
    patches, and no pooling reads them. attention_window = W > 0 (odd) lets a patch attend only to
    the W x W patches centred on it (a class token or a register sees and is seen by all), so after
    n layers a patch's state holds what lies within n * (W - 1) / 2 patches of it; W = 1 is no
    mixing at all, each patch on its own after the stem."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.pool = cfg.pool
        self.n_registers = cfg.registers
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        if cfg.stem == "conv":
            self.patch_embed = ConvStem(cfg.in_channels, cfg.vision_width, cfg.patch_size)
        else:  # ViT's own: one strided convolution cuts and embeds the patches
            self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.vision_width, cfg.patch_size,
                                         cfg.patch_size)
        # only the class token pooling has a class token (an unused parameter would trip DDP)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vision_width)) if cfg.pool == "cls" else None
        n_tokens = n_patches + (cfg.pool == "cls")
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.vision_width))
        self.register_tokens = (nn.Parameter(torch.zeros(1, cfg.registers, cfg.vision_width))
                                if cfg.registers else None)
        self.blocks = nn.ModuleList(Block(cfg.vision_width, cfg.vision_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.vision_layers))
        self.ln_final = nn.LayerNorm(cfg.vision_width)
        self.attn_pool = (nn.Sequential(nn.Linear(cfg.vision_width, cfg.vision_width // 2), nn.Tanh(),
                                        nn.Linear(cfg.vision_width // 2, 1))
                          if cfg.pool == "attn" else None)
        self.pair_mask = (local_mask(cfg.image_size // cfg.patch_size, cfg.attention_window // 2,
                                     cfg.pool == "cls", cfg.registers) if cfg.attention_window else None)

    def tokens(self, images):
        """images (B, C, H, W) -> (B, P, W): every token's final state, after the final LayerNorm;
        P = g * g patches in row-major order (row 0 first), g = image_size // patch_size.
        With pool="cls" the class token's state comes first: (B, 1 + P, W); registers are dropped.
        The one forward path of the ViT: forward() pools its output, DualEncoder.patch_states reads
        the patches."""
        x = self.patch_embed(images)                       # (B, W, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)                   # (B, P, W)
        if self.pool == "cls":
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, W)
            x = torch.cat([cls, x], dim=1)                 # (B, 1 + P, W)
        x = x + self.pos_embed
        if self.register_tokens is not None:               # after the patches, no position
            x = torch.cat([x, self.register_tokens.expand(x.shape[0], -1, -1)], dim=1)
        mask = None if self.pair_mask is None else self.pair_mask.to(x.device)
        for block in self.blocks:
            x = block(x, pair_mask=mask)
        x = self.ln_final(x)                               # (B, [1 +] P [+ R], W)
        return x[:, :x.shape[1] - self.n_registers]        # the registers' part is done

    def forward(self, images):
        return self.pool_tokens(self.tokens(images))

    def patch_weights(self, x):
        """pool="attn": tokens(images) (B, P, W) -> (B, P), each patch's weight (they sum to 1)."""
        return self.attn_pool(x).squeeze(-1).softmax(dim=1)

    def pool_tokens(self, x):
        """tokens(images) -> (B, W): the one vector per image that `pool` names."""
        if self.pool == "cls":
            return x[:, 0]                                 # (B, W): the class token
        if self.pool == "mean":
            return x.mean(dim=1)                           # (B, W): every patch alike
        if self.pool == "attn":
            return (self.patch_weights(x).unsqueeze(-1) * x).sum(dim=1)   # (B, W)
        return x.amax(dim=1)                               # (B, W): the strongest patch, per channel


def local_mask(g, radius, cls, registers):
    """(L, L) bool, True where query i may attend to key j: patch (r, c) of the g x g grid to the
    patches within `radius` rows and columns of it; a class token (first, when cls) and the
    registers (last) to and from every token."""
    rows, cols = torch.arange(g).repeat_interleave(g), torch.arange(g).repeat(g)
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    L = int(cls) + g * g + registers
    mask = torch.ones(L, L, dtype=torch.bool)
    mask[int(cls):int(cls) + g * g, int(cls):int(cls) + g * g] = near
    return mask


class TextTransformer(nn.Module):
    """Token and position embeddings, bidirectional pre-norm blocks with a padding mask, and the
    mean of the non-padding tokens' final states as the pooled output.

    Masked mean pooling (rather than CLIP's end-of-text token under a causal mask) makes the output
    exactly independent of how much padding follows the text: padded keys are never attended to and
    padded positions never enter the mean."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.text_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width)

    def forward(self, tokens):
        return self.pool_states(*self.token_states(tokens))

    @staticmethod
    def pool_states(x, mask):
        """token_states' (x, mask) -> (B, W): the mean of the real tokens' states."""
        m = mask.unsqueeze(-1).to(x.dtype)                   # (B, L, 1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)        # (B, W)

    def token_states(self, tokens):
        """tokens (B, L) -> every token's final state (B, L, W) and the mask of real tokens (B, L)."""
        B, L = tokens.shape
        if L > self.context_length:
            raise ValueError(f"token sequence of length {L} is longer than context_length "
                             f"{self.context_length}")
        mask = tokens != PAD_ID                              # (B, L), True for real tokens
        x = self.token_embed(tokens) + self.pos_embed[:, :L]  # (B, L, W)
        for block in self.blocks:
            x = block(x, key_mask=mask)
        return self.ln_final(x), mask


class DualEncoder(nn.Module):
    """CLIP's two towers, their projections to the shared D-dimensional space, and logit_scale."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg)
        self.text = TextTransformer(cfg)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        # CLIP: s = exp(logit_scale) starts at 1/0.07 and is clamped to at most 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.apply(self._init_weights)
        if isinstance(self.visual.patch_embed, ConvStem):
            self.visual.patch_embed.reset_parameters()   # normalised convs need He init, not 0.02
        for p in (self.visual.cls_token, self.visual.register_tokens, self.visual.pos_embed,
                  self.text.pos_embed):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        if self.visual.attn_pool is not None:            # attention pooling starts as the mean
            nn.init.zeros_(self.visual.attn_pool[-1].weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def encode_image(self, images):
        """images (B, C, H, W) float -> (B, D), unit L2 norm."""
        return F.normalize(self.image_proj(self.visual(images)), dim=-1)

    def encode_text(self, tokens):
        """tokens (B, L) long, padded with PAD_ID -> (B, D), unit L2 norm."""
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    def patch_states(self, images):
        """images (B, C, H, W) -> (B, P, vision_width): the patch tokens' final states, exactly as
        the pooling sees them (pool="max" takes their channel-wise maximum; pool="cls" reads the
        class token instead, dropped here). P = g * g patches in row-major order (row 0 first),
        g = image_size // patch_size."""
        x = self.visual.tokens(images)
        return x[:, 1:] if self.visual.pool == "cls" else x

    def encode_patches(self, images):
        """images (B, C, H, W) -> (B, P, D), unit L2 norm: every patch in the joint space through
        the pooled vector's own projection (image_proj), so a patch and a text embedding compare
        by cosine as an image and a text do (BioViL's patch-text similarity, Boecking et al.
        2022). For pool="max", image_proj of the patches' channel-wise maximum is encode_image;
        the maximum of the projected patches is not (the projection is linear, the maximum is not)."""
        return F.normalize(self.image_proj(self.patch_states(images)), dim=-1)

    def patch_vectors(self, images, states=None):
        """images (B, C, H, W) -> (B, P, D): the image embedding split over the patches. For
        pool max, mean and attn they add up to encode_image(images) exactly (tested), so
        patch p's share of the cosine with any text t is patch_vectors[p] . t:
        - pool="max": channel c of the pooled vector m is one patch's (the argmax p*(c)), and
          z = image_proj(m) = sum_c m_c image_proj[:, c]: patch p gets the columns of the
          channels it wins (a class activation map for max pooling), over |z|.
        - pool="mean" / "attn": z = sum_p w_p image_proj(x_p), w = 1/P or the learned patch
          weights: patch p gets its own term, over |z|.
        - pool="cls": the class token attends to every patch through every layer, so no exact
          split exists; the vectors are then encode_patches / P, which do not add up to it.
        states: patch_states(images) when already at hand (images is then not read)."""
        x = self.patch_states(images) if states is None else states     # (B, P, W)
        if self.visual.pool == "cls":
            return F.normalize(self.image_proj(x), dim=-1) / x.shape[1]
        pooled = self.visual.pool_tokens(x)                             # (B, W)
        norm = self.image_proj(pooled).norm(dim=-1)[:, None, None]      # (B, 1, 1): |z|
        if self.visual.pool in ("mean", "attn"):
            w = self.visual.patch_weights(x).unsqueeze(-1) if self.visual.pool == "attn" else 1 / x.shape[1]
            return self.image_proj(x * w) / norm
        won = torch.zeros_like(x).scatter_(1, x.argmax(dim=1, keepdim=True), pooled.unsqueeze(1))
        return self.image_proj(won) / norm                              # won[b, p, c]: m_c if p = p*(c)

    def patch_shares(self, images, text_features, states=None):
        """images (B, C, H, W), text_features (B, D) -> (B, P): each patch's share of the image-text
        cosine cos(encode_image(images), t), t = text_features normalised: patch_vectors . t. For
        pool max, mean and attn the shares add up to the cosine exactly, so the map is the score's
        own decomposition (tested); for pool="cls" they are the patches' cosines with t over P."""
        t = F.normalize(text_features, dim=-1)                          # (B, D)
        return torch.einsum("bpd,bd->bp", self.patch_vectors(images, states), t)

    def forward(self, images, tokens, words=False):
        """Both embeddings and s = exp(logit_scale). Training calls the model through forward (not
        the encode_* methods) so that DistributedDataParallel sees every parameter it must reduce.
        words=True (for loss.word_patch_loss) also returns, from the same passes, every patch
        (encode_patches) and every token through text_proj, (B, P, D) and (B, L, D) at unit norm,
        and the mask of real tokens (B, L)."""
        if not words:
            return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()
        x = self.visual.tokens(images)                                  # (B, [1 +] P, W)
        t, mask = self.text.token_states(tokens)                        # (B, L, W), (B, L)
        patches = x[:, 1:] if self.visual.pool == "cls" else x
        return (F.normalize(self.image_proj(self.visual.pool_tokens(x)), dim=-1),
                F.normalize(self.text_proj(self.text.pool_states(t, mask)), dim=-1),
                self.logit_scale.exp(), F.normalize(self.image_proj(patches), dim=-1),
                F.normalize(self.text_proj(t), dim=-1), mask)

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale=100.0):
        self.logit_scale.clamp_(0, math.log(max_scale))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


def param_groups(model, weight_decay):
    """Decay the weight matrices; leave norms, biases, embeddings and logit_scale alone (decaying a
    LayerNorm gain or a position table towards zero only fights the model)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        embedding = any(key in name for key in ("token_embed", "pos_embed", "cls_token", "register_tokens"))
        (no_decay if p.ndim < 2 or embedding or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


if __name__ == "__main__":
    # `python model.py` prints each preset's parameter count (the numbers in the README).
    for name in PRESETS:
        cfg = make_config(name)
        model = DualEncoder(cfg)
        vis = sum(p.numel() for p in model.visual.parameters())
        txt = sum(p.numel() for p in model.text.parameters())
        print(f"{name:6s} image {cfg.image_size}px patch {cfg.patch_size}: "
              f"{model.num_params() / 1e6:.2f}M parameters (vision {vis / 1e6:.2f}M, "
              f"text {txt / 1e6:.2f}M), config {asdict(cfg)}")
