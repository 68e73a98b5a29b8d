"""Use a trained model: your own images in, class probabilities and grounding maps out.

    python eval.py --checkpoint out --image x.png --classes "pleural effusion,pneumothorax,no finding"
    python eval.py --checkpoint out --image x.png y.png --prompts prompts.json --json answers.json
    python eval.py --checkpoint out --image x.png --text "left pleural effusion" \
        --show-grounding map.png

and the same in Python:

    model, tokenizer, _ = load_checkpoint("out")                   # plumbing.checkpoint
    images = load_images(["x.png"], model.cfg.image_size, model.cfg.in_channels)
    probs = predict(model, tokenizer, images, ["pleural effusion", "pneumothorax", "no finding"])

Nothing of the benchmark runs, and nothing differs from it: an image is read as a row of a
classification manifest is (manifests.read.load_image: centre-cropped to a square and resized to
the checkpoint's image size and channels, then /255 in protocols.embed_images); a class is the mean
of its prompts' embeddings and p(class | image) = softmax(s * cosine) at the model's own s =
exp(logit_scale), as zero-shot evaluation scores it (protocols.class_probabilities); a sentence's
map is the grounding evaluation's (protocols.grounding_maps: each patch's share of the score), drawn
by tools/plot.py's draw_grounding with no true region to outline.
"""

import json
import os

import torch
from PIL import Image

from evaluation.protocols import class_probabilities, embed_images, grounding_maps
from evaluation.sets import read_prompts
from manifests.read import load_image
from plumbing.checkpoint import first_line
from plumbing.runtime import InputError, WriteError, check_output_file, reason, write_text

# -----------------------------------------------------------------------------
# The Python interface


def load_images(paths, image_size, channels=1):
    """Image files -> uint8 (n, channels, image_size, image_size), exactly as a classification
    manifest's rows are read (manifests.read.load_image). A missing or unreadable file raises
    InputError in one line naming it."""
    out = []
    for path in map(str, paths):
        check_image_file(path)
        try:
            out.append(torch.from_numpy(load_image(path, image_size, channels).copy()))
        except Image.UnidentifiedImageError:
            raise InputError(f"cannot read image {path}: not a picture Pillow can open "
                             f"(PNG, JPEG, ...)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # as manifests
            raise InputError(f"cannot read image {path}: {first_line(e)}") from None
    return torch.stack(out)


def check_image_file(path):
    """InputError naming path unless it is a file."""
    if not os.path.isfile(path):
        raise InputError(f"image not found: {path}" + (" (a folder)" if os.path.isdir(path) else ""))


def predict(model, tokenizer, images, classes, device="cpu", batch_size=256, precision="fp32"):
    """Zero-shot class probabilities of each image: (n, C) float32 on the CPU, rows summing to 1.

    images: uint8 (n, C, H, W) as load_images returns them (or float in [0, 1]). classes: a list of
    names, each its own single prompt, or {"name": ["prompt", ...]} (eval.py --prompts' file), a
    class then being the mean of its prompts' embeddings. The numbers are zero-shot evaluation's
    (protocols.class_probabilities: softmax of s * cosine, s = exp(logit_scale)). precision: "fp32",
    or "bf16"/"fp16" autocast for the forward passes (protocols.forward_precision)."""
    prompts = dict(classes) if isinstance(classes, dict) else {name: [name] for name in classes}
    features = embed_images(model, images, device, batch_size, precision=precision)     # (n, D)
    return class_probabilities(model, tokenizer, features, list(prompts), prompts, device, batch_size,
                               precision=precision)


def unseen_words(tokenizer, texts):
    """The words of texts that are not whole words of the tokenizer's vocabulary: the model never
    read them in a report and sees them spelled out piece by piece (data.train_tokenizer)."""
    norm, pre = tokenizer.normalizer, tokenizer.pre_tokenizer
    words = {w for text in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))}
    return sorted(w for w in words if w.isalpha() and tokenizer.token_to_id(w) is None)


# -----------------------------------------------------------------------------
# eval.py --image: the options, checked before any slow work

# eval.py's options that only the benchmark reads: --image refuses them rather than ignore them.
BENCHMARK_OPTIONS = ("eval_manifest", "retrieval_manifest", "grounding_manifest", "show",
                     "n_per_class", "n_retrieval", "eval_seed", "seeds", "bootstrap", "data_cache")
GROUNDING_CELL, GROUNDING_PER_ROW = 128, 4   # --show-grounding's cells (draw_grounding's size), a row


def parse_classes(text):
    """--classes "a, b,c" -> {"a": ["a"], "b": ["b"], "c": ["c"]}: each name its own prompt."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(names) < 2:
        raise InputError(f"--classes {text!r}: give at least two class names, separated by commas")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"--classes {text!r}: {twice[0]!r} is named twice")
    return {name: [name] for name in names}


def _check_combination(args, given):
    """One line for the first option that contradicts another (given: the options the command line
    set, as against their defaults)."""
    asked = [f"--{flag}" for flag in ("classes", "text") if getattr(args, flag) is not None]
    if not args.image:
        raise InputError(f"{asked[0]} asks about your own images: give them with "
                         f"--image PNG [PNG ...]")
    for name in BENCHMARK_OPTIONS:
        if name in given:
            raise InputError(f"--{name.replace('_', '-')} is an option of the benchmark, which --image "
                             f"does not run: drop one of the two")
    if args.classes is not None and args.prompts:
        raise InputError("--classes and --prompts both name the classes: give one of them")
    if args.classes is None and not args.prompts and args.text is None:
        raise InputError("--image needs a question: --classes NAMES, --prompts JSON or --text SENTENCE")
    if args.text is not None and not args.show_grounding:
        raise InputError(f"--text {args.text!r} draws its map over each image: give "
                         f"--show-grounding PNG")
    if args.show_grounding and args.text is None:
        raise InputError(f"--show-grounding {args.show_grounding} with --image draws the map of "
                         f"--text SENTENCE: give it")
    if args.json and args.classes is None and not args.prompts:
        raise InputError(f"--json {args.json} writes class probabilities: give --classes or "
                         f"--prompts")
    if args.text is not None and not args.text.strip():
        raise InputError("--text is empty: give the sentence to find in the images")


def check_image_options(args, given=()):
    """eval.py --image, --classes, --text: every option and path checked before the checkpoint is
    read. Returns the classes' prompts {"class": ["prompt", ...]} (None with --text alone)."""
    _check_combination(args, given)
    prompts = parse_classes(args.classes) if args.classes is not None else (
        read_prompts(args.prompts) if args.prompts else None)
    for path in args.image:
        check_image_file(path)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    for flag in ("json", "show_grounding"):
        if getattr(args, flag):
            check_output_file(f"--{flag.replace('_', '-')}", getattr(args, flag))
    return prompts


# -----------------------------------------------------------------------------
# eval.py --image: the answers


def format_predictions(paths, probs, classes):
    """Per image: "path: top class (its probability)", then every class's probability in the
    order given."""
    lines = []
    for path, row in zip(paths, probs):
        top, values = int(row.argmax()), row.tolist()
        lines.append(f"{path}: {classes[top]} ({values[top]:.3f})")
        lines += [f"  {p:.3f}  {name}" for name, p in zip(classes, values)]
    return "\n".join(lines)


def predictions_json(paths, probs, prompts, scale):
    """What format_predictions prints, as --json writes it."""
    classes = list(prompts)
    return {"scale": scale, "prompts": prompts,
            "images": [{"image": path, "top": classes[int(row.argmax())],
                        "probabilities": dict(zip(classes, row.tolist()))}
                       for path, row in zip(paths, probs)]}


def _note_unseen(tokenizer, texts):
    unseen = unseen_words(tokenizer, texts)
    if unseen:
        print(f"note: words no training report had, which the model reads spelled out piece by "
              f"piece: {', '.join(unseen)}")


def draw_sentence_maps(model, tokenizer, images, args):
    """--text with --show-grounding: the sentence's map over each image, min-max scaled per image,
    in cells of GROUNDING_CELL px (a caption of 4 lines under each), GROUNDING_PER_ROW a row."""
    from tools.plot import draw_grounding   # Pillow: only --show-grounding needs it
    n = len(images)
    maps = grounding_maps(model, tokenizer, images, [args.text] * n, args.device, args.batch_size,
                          precision=args.precision)
    per_row = min(n, GROUNDING_PER_ROW)
    rows = [str(i // per_row) for i in range(n)]        # draw_grounding draws a row per label
    captions = [f"{os.path.basename(path)}: {args.text}" for path in args.image]
    no_region = torch.zeros(maps.shape, dtype=torch.bool)   # nothing to outline in green
    try:
        draw_grounding(args.show_grounding, images, no_region, maps, captions, rows,
                       per_class=per_row, cell=GROUNDING_CELL)
        with Image.open(args.show_grounding) as picture:
            size = picture.size
    except OSError as e:
        raise WriteError(f"cannot write {args.show_grounding}: {reason(e)}") from None
    print(f"wrote {args.show_grounding} ({size[0]}x{size[1]} px: the map of {args.text!r} over "
          f"{n} image(s))")


def answer(model, tokenizer, args, prompts):
    """eval.py --image: print (and with --json write) each image's class probabilities, draw
    --text's map with --show-grounding."""
    cfg = model.cfg
    images = load_images(args.image, cfg.image_size, cfg.in_channels)
    if prompts:
        probs = predict(model, tokenizer, images, prompts, args.device, args.batch_size,
                        precision=args.precision)
        scale = float(model.logit_scale.detach().exp())
        ensemble = "its prompts' mean embedding" if args.prompts else "its name as the prompt"
        print(f"zero-shot over {len(prompts)} classes, each {ensemble}: p = softmax(s * cosine), "
              f"s = exp(logit_scale) = {scale:.2f}")
        _note_unseen(tokenizer, [p for ps in prompts.values() for p in ps])
        print(format_predictions(args.image, probs, list(prompts)))
        if args.json:
            weights = {"checkpoint": args.checkpoint,
                       "weights": "teacher" if args.use_teacher else "student"}
            write_text(args.json, json.dumps({**weights, **predictions_json(
                args.image, probs, prompts, scale)}, indent=2) + "\n")
            print(f"wrote {args.json}")
    if args.text is not None:
        _note_unseen(tokenizer, [args.text])
        draw_sentence_maps(model, tokenizer, images, args)
