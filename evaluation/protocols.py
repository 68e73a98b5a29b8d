"""The frozen model as a feature extractor, and what eval.py measures with its features.

- embed_images, embed_texts: unit-norm embeddings on the CPU, in batches, in eval mode.
- zero_shot: classification by the nearest prompt-ensemble class embedding (class_embeddings), its
  probabilities class_probabilities' (which evaluation/predict.py's predict returns too).
- retrieval: image-to-text and text-to-image Recall@k, identical reports counting as matches.
- grounding_maps, evaluate_grounding: each patch's share of the image-text score as a map (or of
  the score minus the set's mean, the contrast map), and the maps' scores beside those of a
  random map and of a prior that reads only the sentence.

Each function takes the model (or its DistributedDataParallel wrapper) and puts it back in the mode
it was in: train.py evaluates in the middle of training.
"""

import contextlib
import functools

import torch
import torch.nn.functional as F

from data import report_ids, tokenize
from evaluation.grounding import contrast_shares, grid_ceiling, random_grid_null, summarize, upsample_grid
from evaluation.metrics import macro_auc_ovr, recall_hits

# -----------------------------------------------------------------------------
# Embeddings


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forward_precision(model, precision):
    """A fresh context for the model's forward passes: "fp32" adds none (the caller's, if any,
    stays), "bf16" and "fp16" are torch.autocast on the device of the model's weights, as train.py
    computes (plumbing/runtime.py's resolve_precision chooses which)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return torch.autocast(next(model.parameters()).device.type, dtype=AUTOCAST[precision])


def _restore_mode(fn):
    """Run fn with the model in eval mode, under no_grad and its precision= keyword's
    forward_precision, then put the model back in the mode it was in."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        model = getattr(model, "module", model)   # unwrap DistributedDataParallel
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), forward_precision(model, kwargs.get("precision", "fp32")):
                return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


def _model_input(images, in_channels):
    """A batch of benchmark images as the model takes them: float in [0, 1] (uint8 is divided by
    255), grayscale expanded to RGB for an RGB-trained model."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 1 and in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x


@_restore_mode
def embed_images(model, images, device, batch_size=256, precision="fp32"):
    """images (n, C, H, W), uint8 in [0, 255] (or float in [0, 1]) -> (n, D) float32 on the CPU,
    unit L2 norm. Batches of batch_size go to the device one at a time, so n can be large.
    precision: "fp32", or "bf16"/"fp16" autocast for the forward passes (forward_precision); every
    function below takes it and passes it on."""
    in_channels = getattr(getattr(model, "cfg", None), "in_channels", images.shape[1])
    out = []
    for i in range(0, len(images), batch_size):
        x = _model_input(images[i:i + batch_size].to(device), in_channels)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())  # bf16: again
    return torch.cat(out) if out else torch.zeros(0, 0)


@_restore_mode
def embed_texts(model, tokenizer, texts, device, batch_size=256, precision="fp32"):
    """texts: list of n strings -> (n, D) float32 on the CPU, unit L2 norm."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, _ = tokenize(tokenizer, texts[i:i + batch_size], model.cfg.context_length)  # (b, L)
        out.append(F.normalize(model.encode_text(ids.to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


# -----------------------------------------------------------------------------
# Zero-shot classification and retrieval


def class_embeddings(model, tokenizer, classes, prompts, device, batch_size=256, precision="fp32"):
    """A prompt ensemble per class (CLIP, section 3.1.4): the mean of the class's normalised prompt
    embeddings, renormalised. Averaging in embedding space smooths over the wording of any single
    prompt. Returns (C, D), row c for classes[c]."""
    flat, owner = [], []
    for c, name in enumerate(classes):
        if not prompts.get(name):
            raise ValueError(f"no prompts for class {name!r}")
        flat += list(prompts[name])
        owner += [c] * len(prompts[name])
    emb = embed_texts(model, tokenizer, flat, device, batch_size, precision=precision)  # (P, D)
    owner = torch.tensor(owner)
    means = torch.stack([emb[owner == c].mean(0) for c in range(len(classes))])  # (C, D)
    return F.normalize(means, dim=-1)


def class_probabilities(model, tokenizer, image_features, classes, prompts, device, batch_size=256,
                        precision="fp32"):
    """(n, C) p(class c | image) = softmax_c(s * cos(image, class_c)), s = exp(logit_scale), for
    unit-norm image_features (n, D) and the prompt ensembles of classes (class_embeddings): what
    zero_shot scores and evaluation.predict.predict (eval.py --image) returns."""
    model = getattr(model, "module", model)   # unwrap DistributedDataParallel for logit_scale
    text = class_embeddings(model, tokenizer, classes, prompts, device, batch_size,
                            precision=precision)                                  # (C, D)
    scale = float(model.logit_scale.detach().exp())
    return torch.softmax(scale * image_features @ text.T, dim=-1)


def zero_shot(model, tokenizer, images, labels, classes, prompts, device, batch_size=256,
              image_features=None, precision="fp32"):
    """Zero-shot classification: p(class c | image) = softmax_c(s * cos(image, class_c)) with the
    model's own inverse temperature s = exp(logit_scale). The argmax (accuracy) does not depend on
    s, the one-vs-rest AUC of the probabilities does, so we use the s the model was trained with.

    images (n, C, H, W), labels (n,) indices into classes, prompts {class: [prompt, ...]}.
    image_features (n, D) may be passed to skip the image encoder (eval.evaluate reuses them for
    the few-shot probe). Returns {"accuracy", "auc", "probs" (n, C)}."""
    if image_features is None:
        image_features = embed_images(model, images, device, batch_size, precision=precision)
    probs = class_probabilities(model, tokenizer, image_features, classes, prompts, device,
                                batch_size, precision=precision)               # (n, C)
    labels = torch.as_tensor(labels).long()
    return {"accuracy": (probs.argmax(dim=1) == labels).double().mean().item(),
            "auc": macro_auc_ovr(probs, labels),
            "probs": probs}


def retrieval(model, tokenizer, images, texts, device, batch_size=256, ks=(1, 5, 10), hits=False,
              precision="fp32"):
    """Image-to-text and text-to-image Recall@k over n held-out pairs (image i goes with texts[i]);
    a candidate whose normalised report equals the query's counts as correct (report_ids).
    Returns {"i2t_r1", ..., "t2i_r10"}; with hits=True, (that, the same keys' (n,) bool hit vectors
    query by query: row i is the query of pair i in either direction, for the bootstrap)."""
    img = embed_images(model, images, device, batch_size, precision=precision)          # (n, D)
    txt = embed_texts(model, tokenizer, texts, device, batch_size, precision=precision)  # (n, D)
    sim = img @ txt.T                                              # (n, n) cosine similarities
    ids = report_ids(texts)                                        # (n,)
    correct = ids[:, None] == ids[None, :]                         # (n, n) True on the diagonal too
    i2t = recall_hits(sim, correct, ks)
    t2i = recall_hits(sim.T, correct.T, ks)
    per_query = {**{f"i2t_r{k}": v for k, v in i2t.items()},
                 **{f"t2i_r{k}": v for k, v in t2i.items()}}
    recalls = {key: v.double().mean().item() for key, v in per_query.items()}
    return (recalls, per_query) if hits else recalls


# -----------------------------------------------------------------------------
# Phrase grounding


@_restore_mode
def mean_patch_vectors(model, images, device, batch_size=256, precision="fp32"):
    """(P, D) float32 on the CPU: the mean of model.patch_vectors over the images, the set's mean
    image split over its patches (grounding.similarity_map's mean_vectors, for contrast maps)."""
    total = 0
    for i in range(0, len(images), batch_size):
        x = _model_input(images[i:i + batch_size].to(device), model.cfg.in_channels)
        total = total + model.patch_vectors(x).float().sum(0).cpu()
    return total / len(images)


@_restore_mode
def _share_grids(model, tokenizer, images, texts, device, batch_size=256, precision="fp32"):
    """(n, P) float32 on the CPU: each image's patch shares of its own sentence
    (model.patch_shares), and the sentences' unit embeddings (n, D): one pass of the image tower
    from which both a share map and a contrast map follow."""
    text = embed_texts(model, tokenizer, texts, device, batch_size, precision=precision)  # (n, D)
    shares = []
    for i in range(0, len(texts), batch_size):
        x = _model_input(images[i:i + batch_size].to(device), model.cfg.in_channels)
        shares.append(model.patch_shares(x, text[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(shares), text


def grounding_maps(model, tokenizer, images, texts, device, batch_size=256, precision="fp32",
                   mean_vectors=None):
    """Maps (n, H, W) on the CPU of each image with its own sentence (grounding.similarity_map):
    each patch's share of the score, or with mean_vectors (mean_patch_vectors of the set) the
    contrast map, its share of the score minus the set's mean score for the same sentence."""
    shares, text = _share_grids(model, tokenizer, images, texts, device, batch_size, precision)
    return upsample_grid(contrast_shares(shares, text, mean_vectors), images.shape[-1])


def evaluate_grounding(model, tokenizer, gr, device, batch_size=256, precision="fp32"):
    """Pointing game, CNR, signed CNR and mIoU (grounding.py) per class and overall of the model's
    maps of gr["texts"], and beside them:
    - "contrast": the same scores of the contrast maps (the score minus the mean score of the
      set's images for the same sentence, grounding.similarity_map), from two items on;
    - "random_grid": random maps on the model's patch grid (grounding.random_grid_null), and
      "grid_ceiling": the best pointing game any map on that grid can reach (grounding.grid_ceiling);
    - "text_prior", "text_prior_unlocated": maps that read only the sentence (grounding.text_prior),
      where gr has them (the synthetic set: gr["prior"], gr["prior_unlocated"]);
    and "unlocated", "contrast_unlocated": the model's maps of sentences that name the finding
    alone (gr["unlocated"], the synthetic set), where a map that ignores the image cannot know the
    place. The random grid and the prior read no model, so they are the null of either map.

    gr: {"images" (n, C, H, W), "texts" [n], "masks" (n, H, W) bool, "labels" [n] class names},
    optionally "unlocated", "prior", "prior_unlocated", "prior_seed" (evaluation.sets)."""
    masks = gr["masks"]
    mean = (mean_patch_vectors(model, gr["images"], device, batch_size, precision=precision)
            if len(masks) > 1 else None)          # one item: nothing to contrast it with

    def scores(texts):
        """The share maps' scores and the contrast maps' (None for one item), from one pass."""
        shares, text = _share_grids(model, tokenizer, gr["images"], texts, device, batch_size, precision)
        def score(grid):
            return summarize(zip(gr["labels"], upsample_grid(grid, masks.shape[-1]), masks))
        return score(shares), None if mean is None else score(contrast_shares(shares, text, mean))

    out, contrast = scores(gr["texts"])
    if contrast is not None:
        out["contrast"] = contrast
    cfg = getattr(model, "module", model).cfg
    grid = cfg.image_size // cfg.patch_size
    out["random_grid"] = random_grid_null(gr["labels"], masks, grid)
    out["grid_ceiling"] = grid_ceiling(gr["labels"], masks, grid)
    if "unlocated" in gr:
        out["unlocated"], contrast = scores(gr["unlocated"])
        if contrast is not None:
            out["contrast_unlocated"] = contrast
    for key in ("prior", "prior_unlocated"):
        if key in gr:
            out[f"text_{key}"] = {**summarize(zip(gr["labels"], gr[key], masks)),
                                  "seed": gr["prior_seed"]}
    return out
