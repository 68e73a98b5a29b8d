"""
Phrase grounding: where in the image does the model see what a sentence says?

The map is the image-text score split over the patches: each patch's share of the cosine between
the image and the sentence (model.DualEncoder.patch_shares; the shares add up to the score, so the
map shows what the score is made of), on the patch grid, upsampled to the image as BioViL does
(Boecking et al., "Making the Most of Text Semantics to Improve Biomedical Vision-Language
Processing", ECCV 2022). Four scores compare such a map with the region where the finding is (a
mask): the pointing game, CNR (unsigned, BioViL's), signed CNR and mIoU, per class and overall.
Two references say what a score is worth: random grid maps put through the same upsampling and
scoring (random_grid_null), and a map that reads only the sentence (text_prior: the mean region of
the sentence's class and place on other studies).

Two parts. The first (maps, metrics, aggregation) needs torch alone and can be copied out of the
repository on its own. The second reads a grounding manifest (real data with boxes, such as
MS-CXR through `python -m tools.convert ms-cxr`) into images and masks; it needs Pillow and data.py,
imported inside its functions, so the first part copies out without them.

    maps = similarity_map(model, images, model.encode_text(tokens))   # (B, H, W)
    null = random_grid_null(labels, masks, grid=8)                    # what a random map scores
    scores = summarize([(label, m, mask) for label, m, mask in zip(labels, maps, masks)])

docs/grounding.md describes the masks, the metrics and the manifest format.
"""

import csv
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The map


def similarity_map(model, images, text_features):
    """Each patch's share of the image-text score, as a map at the image's resolution.

    images (B, C, H, W): as encode_image takes them (float in [0, 1]; uint8 is divided by 255).
    text_features (B, D), or (D,) for one text shared by all images: text embeddings, e.g.
    model.encode_text(tokens) (normalised again inside, so any scale will do).
    Returns (B, H, W) float: model.patch_shares on the g x g patch grid (their sum is the cosine
    of the image and the text), upsampled bilinearly with align_corners=False (each patch's value
    sits at its centre; BioViL's phrase-grounding notebook upsamples bilinearly too). Unlike
    BioViL's inference code we do not smooth the grid first (it applies a Gaussian of 1.5
    patches): on an 8 x 8 grid that would blur across a fifth of the image. Gradients flow; wrap
    in torch.no_grad() to evaluate."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    B = images.shape[0]
    text = text_features.expand(B, -1) if text_features.dim() == 1 else text_features   # (B, D)
    shares = model.patch_shares(images, text)                      # (B, P)
    return upsample_grid(shares, images.shape[-1])


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


# -----------------------------------------------------------------------------
# Boxes to masks, and the grounding manifest
#
# A grounding manifest is a CSV with columns image, text, x, y, w, h, and optionally label (the
# class, for per-class scores); other columns are ignored. (x, y) is the box's top-left corner in
# the image file's own pixels (x to the right, y down, from the top-left corner of the image),
# w and h its width and height. Several rows may name the same image; rows with the same image
# and the same text are one phrase with several boxes (MS-CXR's "Bibasilar opacities" has two),
# whose region is the union of its boxes.


def box_to_mask(x, y, w, h, image_w, image_h, size):
    """A box in an (image_w, image_h) image's pixels -> bool (size, size) mask of the evaluation
    image that manifest.load_image makes of it: the centred square crop of side min(image_w, image_h)
    (Pillow's ImageOps.fit), resized to size x size.

    Rounding rule: an evaluation pixel is in the mask when its CENTRE falls inside the box, with
    the box half-open, [x, x + w) x [y, y + h), so two boxes that share an edge never share a
    pixel. Pixel (i, j)'s centre is at (left + (j + 0.5) * s, top + (i + 0.5) * s) in the original
    image, s = side / size. E.g. a 100 x 100 image at size 10: the box (20, 30, 40, 10) is rows
    3..3, columns 2..5. A box too small to hold any pixel centre gets the one pixel under its
    own centre, so that no phrase vanishes; a box wholly in the part the crop cuts off gets an
    empty mask (the manifest reader drops those phrases and counts them)."""
    side = min(image_w, image_h)
    left, top, s = (image_w - side) / 2, (image_h - side) / 2, side / size
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) * s
    cols = (left + centres >= x) & (left + centres < x + w)
    rows = (top + centres >= y) & (top + centres < y + h)
    mask = rows[:, None] & cols[None, :]
    if not mask.any():
        j, i = math.floor((x + w / 2 - left) / s), math.floor((y + h / 2 - top) / s)
        if 0 <= i < size and 0 <= j < size:
            mask[i, j] = True
    return mask


GROUNDING_COLUMNS = ("image", "text", "x", "y", "w", "h")


def read_grounding_manifest(csv_path, image_size, channels=1, log=print):
    """A grounding manifest -> {"images": uint8 (n_images, C, S, S), "image_index": long (n,),
    "texts": [str] (n,), "labels": [str or None] (n,), "masks": bool (n, S, S), "dropped": int},
    one entry per phrase (rows grouped by image and text, boxes united). Every row is checked
    before any image is decoded, and every problem is reported with the file, row, line and
    column (the first 20 of them): a missing column, a value that is not a number, a box of
    zero or negative size, a box outside its image, an image file that is not there. Phrases
    whose boxes lie wholly outside the centre crop are dropped, counted aloud and in "dropped"."""
    from PIL import Image  # only here: the maps and metrics above need torch alone

    from manifests.read import ManifestError, load_image

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: file not found")
    errors, rows, sizes = [], [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in GROUNDING_COLUMNS:
            if col not in header:
                raise ManifestError(f"{csv_path}: line 1 (header), column '{col}': missing (header is {header})")
        for row_no, row in enumerate(reader, start=1):
            where = f"{csv_path}: row {row_no} (line {reader.line_num})"
            problem = _check_row(row, where, csv_path.parent, sizes, Image)
            if problem:
                errors.append(problem)
            else:
                rows.append(row)
    if errors:
        more = f"\n({len(errors) - 1} more problems:)\n" + "\n".join(errors[1:20]) if len(errors) > 1 else ""
        raise ManifestError(errors[0] + more)
    if not rows:
        raise ManifestError(f"{csv_path}: no data rows")

    images, index_of = [], {}
    phrases = {}  # (image, text) -> [label, mask]; dicts keep the manifest's order
    for row in rows:
        path = row["path"]
        if path not in index_of:
            index_of[path] = len(images)
            try:  # torch.tensor copies: load_image's array is read-only
                images.append(torch.tensor(load_image(path, image_size, channels)))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise ManifestError(f"{row['where']}, column 'image': cannot read image {path} ({e})") from None
        box = box_to_mask(*(float(row[c]) for c in "xywh"), *sizes[path], image_size)
        key = (path, row["text"].strip())
        if key in phrases:
            phrases[key][1] |= box
        else:
            phrases[key] = [(row.get("label") or "").strip().lower() or None, box]
    kept = [(key, label, mask) for key, (label, mask) in phrases.items() if mask.any()]
    dropped = len(phrases) - len(kept)
    if dropped:
        log(f"grounding: {csv_path}: dropped {dropped} of {len(phrases)} phrases whose boxes lie "
            f"wholly outside the centred square crop the images are evaluated on")
    if not kept:
        raise ManifestError(f"{csv_path}: no phrase has a box inside the evaluated crop")
    return {"images": torch.stack(images), "image_index": torch.tensor([index_of[p] for (p, _), _, _ in kept]),
            "texts": [t for (_, t), _, _ in kept], "labels": [label for _, label, _ in kept],
            "masks": torch.stack([m for _, _, m in kept]), "dropped": dropped}


def _check_row(row, where, root, sizes, Image):
    """The first problem of one manifest row as a message, or None; sets row["path"] and
    row["where"] (for a message about it later), and caches
    the image's (width, height) in sizes (Pillow reads only the file's header for it)."""
    image = (row["image"] or "").strip()
    if not image:
        return f"{where}, column 'image': empty path"
    path = Path(image) if Path(image).is_absolute() else root / image
    if not (row["text"] or "").strip():
        return f"{where}, column 'text': empty phrase"
    box = {}
    for col in "xywh":
        value = (row[col] or "").strip()
        try:
            box[col] = float(value)
        except ValueError:
            return f"{where}, column '{col}': {value!r} is not a number"
        if not math.isfinite(box[col]):
            return f"{where}, column '{col}': {value!r} is not a finite number"
    for col, name in (("w", "width"), ("h", "height")):
        if box[col] <= 0:
            return f"{where}, column '{col}': the box's {name} is {row[col].strip()}; it must be positive"
    for col, side in (("x", "left of"), ("y", "above")):
        if box[col] < 0:
            return f"{where}, column '{col}': {row[col].strip()} is {side} the image (it must be >= 0)"
    key = str(path)
    if key not in sizes:
        if not path.is_file():
            return f"{where}, column 'image': file not found: {path}"
        try:
            with Image.open(path) as im:
                sizes[key] = im.size  # (width, height), from the header: nothing is decoded
        except (OSError, SyntaxError, ValueError) as e:
            return f"{where}, column 'image': cannot read image {path} ({e})"
    width, height = sizes[key]
    for col, extent, name, limit in (("x", "w", "width", width), ("y", "h", "height", height)):
        if box[col] + box[extent] > limit:
            return (f"{where}, columns '{col}' and '{extent}': the box ends at {col} + {extent} = "
                    f"{box[col] + box[extent]:g}, past the image's {name} of {limit} px ({path})")
    row["path"], row["where"] = key, where
    return None
