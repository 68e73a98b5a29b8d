"""
Phrase grounding: where in the image does the model see what a sentence says?

The map is the image-text score split over the patches: each patch's share of the cosine between
the image and the sentence (model.DualEncoder.patch_shares; the shares add up to the score, so the
map shows what the score is made of), on the patch grid, upsampled to the image as BioViL does
(Boecking et al., "Making the Most of Text Semantics to Improve Biomedical Vision-Language
Processing", ECCV 2022). The contrast map splits instead what the contrastive loss sees: the score
minus the set's mean score for the same sentence (similarity_map's mean_vectors). Four scores
compare a map with the region where the finding is (a mask): the pointing game, CNR (unsigned,
BioViL's), signed CNR and mIoU, per class and overall. Two references say what a score is worth:
random grid maps put through the same upsampling and scoring (random_grid_null), and a map that
reads only the sentence (text_prior: the mean region of the sentence's class and place on other
studies); grid_ceiling says how high a pointing game on the model's patch grid can go at all.

Needs torch alone, so it copies out of the repository on its own. A grounding manifest (real data
with boxes, such as MS-CXR through `python -m tools.convert ms-cxr`) is read by
manifests/grounding.py.

    text = model.encode_text(tokens)                                  # (B, D), one per image
    maps = similarity_map(model, images, text)                        # (B, H, W)
    mean = model.patch_vectors(images).mean(0)                        # the set's mean image, taken
    contrast = similarity_map(model, images, text, mean_vectors=mean) # out: the contrast maps
    null = random_grid_null(labels, masks, grid=8)                    # what a random map scores
    best = grid_ceiling(labels, masks, grid=8)                        # what any 8 x 8 map can score
    scores = summarize([(label, m, mask) for label, m, mask in zip(labels, contrast, masks)])

docs/grounding.md describes the masks, the metrics and the manifest format.
"""

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The map


def similarity_map(model, images, text_features, mean_vectors=None):
    """Each patch's share of the image-text score, as a map at the image's resolution.

    images (B, C, H, W): as encode_image takes them (float in [0, 1]; uint8 is divided by 255).
    text_features (B, D), or (D,) for one text shared by all images: text embeddings, e.g.
    model.encode_text(tokens) (normalised again inside, so any scale will do).
    Returns (B, H, W) float: model.patch_shares on the g x g patch grid (their sum is the cosine
    of the image and the text), upsampled bilinearly with align_corners=False (each patch's value
    sits at its centre; BioViL's phrase-grounding notebook upsamples bilinearly too). Unlike
    BioViL's inference code we do not smooth the grid first (it applies a Gaussian of 1.5
    patches): on an 8 x 8 grid that would blur across a fifth of the image. Gradients flow; wrap
    in torch.no_grad() to evaluate.

    mean_vectors (P, D): the contrast map. Much of the cosine is the same for every image (a
    normal radiograph scores well with "left pleural effusion" too), and a contrastive loss never
    sees that part: only differences between images for one sentence count. With the mean
    model.patch_vectors of a set of images (mean_patch_vectors), each patch's share becomes
    (v_p - mean_vectors_p) . t, the exact split of cos(I, t) - mean_j cos(I_j, t): the score by
    which the sentence picks this image out of the set. It needs the set alone, no labels."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    B = images.shape[0]
    text = text_features.expand(B, -1) if text_features.dim() == 1 else text_features   # (B, D)
    shares = contrast_shares(model.patch_shares(images, text), text, mean_vectors)   # (B, P)
    return upsample_grid(shares, images.shape[-1])


def contrast_shares(shares, text_features, mean_vectors):
    """shares (B, P) of patch_shares minus the shares the sentences give the set's mean image,
    normalize(t) . mean_vectors_p: the contrast map before upsampling. mean_vectors None: shares."""
    if mean_vectors is None:
        return shares
    return shares - F.normalize(text_features, dim=-1) @ mean_vectors.to(shares).T


def upsample_grid(values, size):
    """(B, P) values of a g x g grid (row-major, P = g * g) -> (B, size, size), bilinear with
    align_corners=False: how every map here, a model's or a random one, reaches the image."""
    B, P = values.shape
    g = math.isqrt(P)
    if g * g != P:
        raise ValueError(f"{P} patches do not make a square grid")
    grid = values.reshape(B, 1, g, g)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


# -----------------------------------------------------------------------------
# Metrics. Each takes one map (H, W) float and one mask (H, W) bool of the same shape and returns
# a Python float. The mask must have at least one pixel (CNR: and one pixel outside it too).


def _check(sim, mask, need_outside=False):
    if sim.shape != mask.shape or sim.dim() != 2:
        raise ValueError(f"map {tuple(sim.shape)} and mask {tuple(mask.shape)} must be the same (H, W)")
    if not torch.isfinite(sim).all():
        raise ValueError("the map has NaN or infinite values")
    mask = mask.bool()
    n = int(mask.sum())
    if n == 0 or (need_outside and n == mask.numel()):
        raise ValueError(f"the mask has {n} of {mask.numel()} pixels: it needs some inside"
                         + (" and some outside" if need_outside else ""))
    return sim.double(), mask  # float64: means and variances over many pixels keep their digits


def pointing_game(sim, mask):
    """1.0 if the map's maximum is inside the mask, else 0.0 (Zhang et al., "Top-down Neural
    Attention by Excitation Backprop", IJCV 2018; used on chest X-rays e.g. by MedKLIP, Wu et al.
    2023, on RSNA Pneumonia). Zhang et al. allow 15 pixels of tolerance around the region; we
    allow none: the box or mask is the region.

    Ties: a hit only if EVERY pixel that attains the maximum is inside. Taking the first maximum
    instead would make the score of a flat map depend on where the region lies relative to pixel
    (0, 0); this way a constant map, which points nowhere, is a miss (unless the mask is the
    whole image), and bilinear upsampling's plateaus of equal maxima count as one point."""
    sim, mask = _check(sim, mask)
    at_max = sim == sim.max()
    return float(bool(mask[at_max].all()))


def signed_cnr(sim, mask):
    """Contrast-to-noise ratio with its sign: (mu_in - mu_out) / sqrt(var_in + var_out).

    mu and var: the mean and the POPULATION variance (divided by n, as np.var computes it) of
    the map's values inside and outside the mask. Positive when the map is brighter on the
    region than around it, negative when darker; independent of the map's scale and offset, no
    threshold. Edge cases, with no epsilon: a constant map has no contrast, 0/0, and scores 0.0; a
    two-valued map equal to the mask (1 inside, 0 outside) has contrast but no noise and scores
    float("inf") (minus the mask: -inf); a mean over items that include one is then infinite too
    (a real model's map never is two-valued)."""
    sim, mask = _check(sim, mask, need_outside=True)
    inside, outside = sim[mask], sim[~mask]
    # no noise, read off the values: a mean of equal float64s can be off by a rounding (0/0 -> +-1)
    if inside.min() == inside.max() and outside.min() == outside.max():
        contrast, noise = inside[0] - outside[0], 0
    else:
        contrast = inside.mean() - outside.mean()
        noise = (inside.var(unbiased=False) + outside.var(unbiased=False)).sqrt()
    if noise == 0:
        return 0.0 if contrast == 0 else math.copysign(math.inf, float(contrast))
    return float(contrast / noise)


def cnr(sim, mask):
    """BioViL's contrast-to-noise ratio on MS-CXR (Boecking et al. 2022): the absolute value of
    signed_cnr, |mu_in - mu_out| / sqrt(var_in + var_out). Kept for comparison with BioViL's
    numbers; it scores a map that is darkest on the region as well as one that is brightest
    there, so read it beside signed_cnr."""
    return abs(signed_cnr(sim, mask))


# IoU thresholds on the map min-max normalised to [0, 1]: 0.1, 0.2, ..., 0.9.
THRESHOLDS = tuple(k / 10 for k in range(1, 10))


def miou(sim, mask, thresholds=THRESHOLDS):
    """Mean over thresholds t of IoU(map >= t, mask), the map first min-max normalised to [0, 1]
    per image: (map - min) / (max - min). IoU = |P & M| / |P | M|. Averaging IoU over several cut-
    offs of a normalised heat map is common practice in the chest X-ray grounding literature,
    which however fixes no single list of cut-offs (papers use different ones); ours is 0.1 to 0.9
    in steps of 0.1, and a parameter. A constant map cannot be normalised: it selects no region
    and scores 0.0 (as it scores 0 CNR and a miss in the pointing game)."""
    sim, mask = _check(sim, mask)
    lo, hi = sim.min(), sim.max()
    if hi == lo:
        return 0.0
    norm = (sim - lo) / (hi - lo)
    ious = []
    for t in thresholds:
        pred = norm >= t
        ious.append(float((pred & mask).sum()) / float((pred | mask).sum()))
    return sum(ious) / len(ious)


METRICS = {"pointing_game": pointing_game, "cnr": cnr, "signed_cnr": signed_cnr, "miou": miou}

# -----------------------------------------------------------------------------
# The same metrics on many maps at once (random_grid_null scores thousands; one by one, the time
# goes to the calls). A mask enters as 0/1 factors: x * 1 is x and x * 0 is 0, exactly.

CHUNK_PIXELS = 2 ** 15  # pixels scored at once (8 maps of 64 x 64): small tensors stay in the cache


def score_batch(sims, masks):
    """The four METRICS of N maps of one shape (an (N, H, W) tensor or a list of (H, W) maps) and
    their masks -> {metric: [N Python floats]}: the functions' numbers, 0.0s and infs (CNR's up to
    rounding: its sums add in another order); refuses what they refuse, as _check says."""
    pairs = list(zip(sims, masks, strict=True))  # a ValueError if there are more of one
    out = {metric: [] for metric in METRICS}
    step = max(1, CHUNK_PIXELS // max(1, torch.as_tensor(pairs[0][0]).numel())) if pairs else 1
    for chunk in (pairs[start:start + step] for start in range(0, len(pairs), step)):
        x = torch.stack([torch.as_tensor(sim).detach() for sim, _ in chunk])
        m = torch.stack([torch.as_tensor(mask) for _, mask in chunk]).to(x.device).bool()
        if x.shape != m.shape or x.dim() != 3:
            _check(x[0], m[0])  # raises: a map and its mask must be one (H, W)
        scores, suspect = _score_chunk(x.double().flatten(1), m.flatten(1))
        for i in suspect.nonzero().flatten().tolist():  # _check decides, and says why
            _check(x[i], m[i]), _check(x[i], m[i], need_outside=True)
        for metric, values in scores.items():
            out[metric] += values.tolist()
    return out


def _score_chunk(x, m):
    """float64 maps (N, H * W), bool masks -> ({metric: (N,) float64}, (N,) bool: maybe refused)."""
    hi, lo = x.amax(1), x.amin(1)
    both = torch.stack([m, ~m, m], 1).double()
    w, rest = both[:, :2], both[:, 1:]  # (N, 2, H * W): inside and outside; and 1 - w
    count, xw = w.sum(2), x[:, None] * w
    mean = xw.sum(2) / count  # (N, 2), as var, top and bottom
    deviation = (x[:, None] - mean[..., None]) * w
    var = (deviation * deviation).sum(2) / count
    top = torch.addcmul(xw, rest, lo[:, None, None]).amax(2)  # the rest filled with a value that
    bottom = torch.addcmul(xw, rest, hi[:, None, None]).amin(2)  # cannot win: the region's max, min
    # an empty region's mean is 0/0; a NaN or inf anywhere makes both sums NaN or inf (inf * 0 is NaN)
    suspect = ~torch.isfinite(mean).all(1)
    flat = (top == bottom).all(1)  # no noise, read off the values as signed_cnr does
    contrast = torch.where(flat, top[:, 0] - top[:, 1], mean[:, 0] - mean[:, 1])
    noise = torch.where(flat, 0.0, var.sum(1).sqrt())
    signed = (contrast / noise).nan_to_num(0.0, math.inf, -math.inf)  # 0/0 is 0.0, c/0 is +-inf
    return {"pointing_game": (top[:, 1] < hi).double(), "cnr": signed.abs(), "signed_cnr": signed,
            "miou": _batch_miou(x, m, count[:, 0], hi, lo)}, suspect  # a hit: no maximum outside


def _batch_miou(x, m, n, hi, lo):
    """miou's arithmetic on maps x (N, H * W) with masks m (N, H * W) bool of n pixels."""
    norm = (x - lo[:, None]) / torch.where(hi > lo, hi - lo, 1.0)[:, None]  # a constant map: 0.0 below
    total = torch.zeros_like(hi)
    for t in THRESHOLDS:  # IoUs added up in miou's order, so the float sums are the same
        pred = norm >= t
        inter = (pred & m).sum(1, dtype=torch.int32)  # int32: summing bools as int64 is slower
        total = total + inter / (n + pred.sum(1, dtype=torch.int32) - inter)
    return torch.where(hi > lo, total / len(THRESHOLDS), 0.0)


def summarize(items):
    """items: iterable of (class name, map (H, W), mask (H, W) bool or None). Returns

        {"per_class": {name: {"n": int, "pointing_game": mean, "cnr": mean, "signed_cnr": mean,
                              "miou": mean}},
         "overall": {"n", "pointing_game", "cnr", "signed_cnr", "miou"},   # mean over all items
         "class_mean": {"pointing_game", "cnr", "signed_cnr", "miou"},     # mean of class means
         "no_place": {name: count}}                               # items with mask None

    "overall" weighs every item alike, "class_mean" every class alike (they differ when the
    classes have different sizes; MS-CXR's are about equal). A mask of None is a finding with no
    place (radiograph.NO_PLACE, e.g. edema): counted, not scored."""
    scored, no_place, groups = [], defaultdict(int), defaultdict(list)  # maps of one shape go together
    for name, sim, mask in items:
        if mask is None:
            no_place[name] += 1
        else:  # numpy arrays will do
            sim, mask = torch.as_tensor(sim), torch.as_tensor(mask)
            groups[sim.shape, mask.shape].append(len(scored))
            scored.append((name, sim, mask))
    per_item = [None] * len(scored)
    for rows in groups.values():  # a refused item raises, as in the functions one by one
        got = score_batch([scored[i][1] for i in rows], [scored[i][2] for i in rows])
        for i, *row in zip(rows, *got.values()):
            per_item[i] = row
    scores = defaultdict(lambda: defaultdict(list))  # per class, per metric, in the items' order
    for (name, _, _), row in zip(scored, per_item):
        for metric, value in zip(METRICS, row):
            scores[name][metric].append(value)

    def mean(values):
        return sum(values) / len(values)

    per_class = {name: {"n": len(s["miou"]), **{m: mean(s[m]) for m in METRICS}}
                 for name, s in sorted(scores.items())}
    everything = {m: [v for s in scores.values() for v in s[m]] for m in METRICS}
    overall = {"n": len(everything["miou"]), **{m: mean(everything[m]) if everything[m] else math.nan
                                                 for m in METRICS}}
    class_mean = {m: mean([c[m] for c in per_class.values()]) if per_class else math.nan for m in METRICS}
    return {"per_class": per_class, "overall": overall, "class_mean": class_mean, "no_place": dict(no_place)}


# -----------------------------------------------------------------------------
# What a score is worth: a map that ignores the image, and a map that reads only the sentence.

NULL_DRAWS = 10   # random maps per item: with 250 items, 2,500 maps, so the null's mean is steady


def random_grid_null(labels, masks, grid, draws=NULL_DRAWS, seed=0):
    """The scores of maps that ignore the image: for every item, `draws` grids of grid x grid
    independent uniform values (torch.Generator seeded with seed), upsampled as a model's map is
    (upsample_grid) and scored like one. Not the mask's share of the image: an upsampled grid has
    plateaus and a few large cells, so its pointing game is not that share. Returns summarize's
    dict over items x draws (each class's mean is over its items and draws) with "grid", "draws",
    "seed". A mask of None is a finding with no place, counted once in "no_place" as summarize does."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for name, mask in zip(labels, masks):
        if mask is None:
            items.append((name, None, None))
            continue
        mask = torch.as_tensor(mask)
        maps = upsample_grid(torch.rand(draws, grid * grid, generator=generator), mask.shape[-1])
        items += [(name, m, mask) for m in maps]
    out = summarize(items)
    return {**out, "grid": grid, "draws": draws, "seed": seed}


def _peaks(size, grid):
    """For each of `grid` cells along one axis, the pixel sets a map upsampled to `size` pixels
    (upsample_grid) can have as its maxima along that axis when that cell holds the largest value:
    each of the two pixels nearest the cell's centre alone (its neighbours' values tip the tie),
    or, at the border where the upsampling holds the value flat, that whole run of pixels."""
    src = ((torch.arange(size) + 0.5) * grid / size - 0.5).clamp(0, grid - 1)   # pixel -> cell coordinate
    out = []
    for k in range(grid):
        d = (src - k).abs()
        near = d.min()
        if near == 0:
            out.append([torch.nonzero(d == 0).flatten()])
        else:
            out.append([torch.nonzero(d == near).flatten()[[i]] for i in range(int((d == near).sum()))])
    return out


def grid_ceiling(labels, masks, grid):
    """The best pointing game any map on a grid x grid patch grid can reach, upsampled as a
    model's map is (upsample_grid): an item is a hit when the pixels some map can have as its only
    maxima (one of the 2 x 2 pixels around a cell's centre, or a flat run at the border) lie
    inside the mask. A region that holds none (a 2-5 px nodule on 8 px patches, off the centres)
    cannot be hit by any map at that resolution. Returns {"per_class": {name: {"n",
    "pointing_game"}}, "class_mean": {"pointing_game"}, "grid"}; masks of None are skipped."""
    hits, groups = defaultdict(list), defaultdict(list)   # masks of one size are scored together
    for i, mask in enumerate(masks):
        if mask is not None:
            groups[torch.as_tensor(mask).shape[-1]].append(i)
    hit = {}
    for size, items in groups.items():
        m = torch.stack([torch.as_tensor(masks[i]).bool() for i in items])          # (n, H, W)
        peaks = [p for axis in _peaks(size, grid) for p in axis]                  # the same both ways
        found = torch.zeros(len(items), dtype=torch.bool)
        for rows in peaks:
            across = m[:, rows].all(dim=1)                                        # (n, W)
            for cols in peaks:
                found |= across[:, cols].all(dim=1)
        hit.update(zip(items, found.tolist()))
    for i, (name, mask) in enumerate(zip(labels, masks)):
        if mask is not None:
            hits[name].append(float(hit[i]))
    per_class = {name: {"n": len(h), "pointing_game": sum(h) / len(h)} for name, h in sorted(hits.items())}
    mean = sum(c["pointing_game"] for c in per_class.values()) / len(per_class) if per_class else math.nan
    return {"per_class": per_class, "class_mean": {"pointing_game": mean}, "grid": grid}


def text_prior(keys, reference_keys, reference_masks):
    """Maps that read only the sentence. A key is what a sentence says of the place, as a tuple
    whose first entry is the class: ("nodule", "left", "lower") for "a 1.5 cm left lower lobe
    nodule", ("nodule",) for "a pulmonary nodule". Each key's map is the mean of the reference
    masks with that key (float in [0, 1]: the share of the references whose region covers the
    pixel), or of the class's where no reference has the key. The references must be other
    studies than those scored (a disjoint seed), or the prior would have seen the answers.
    Returns (n, H, W) float, one map per key."""
    sums, counts = {}, {}
    for key, mask in zip(reference_keys, reference_masks):
        for k in dict.fromkeys([tuple(key), tuple(key)[:1]]):
            sums[k] = sums.get(k, 0) + torch.as_tensor(mask).double()
            counts[k] = counts.get(k, 0) + 1
    maps = []
    for key in map(tuple, keys):
        k = key if key in sums else key[:1]
        if k not in sums:
            raise ValueError(f"no reference study of class {key[0]!r} for the text prior")
        maps.append(sums[k] / counts[k])
    return torch.stack(maps).float()
