"""Does centering image embeddings (the hubness fix of image_centering.py) hurt zero-shot classification?

There is no labelled photo set here, so captions give weak labels: a photo's classes are the categories its captions
name (dog, beach, bicycle, child, ... by keyword). A prediction counts as right when any caption of the photo names
the predicted category. Photos whose captions name none are left out. Labels are prompted "a photo of a {}.".

    python benchmarks/centering_zeroshot.py --pairs ../shared/data/flickr8k-dev/pairs.jsonl \
        --ref-pairs ../shared/data/coco-mini-train/pairs.jsonl

Prints one JSON line per model, mean and beta: top-1 accuracy against the weak labels. Means: the other photos'
(--ref-pairs, as image_centering.py) and, for ConSE models (`lite`), the plain mean of the 1,000 ImageNet class
prompts (no data at all).
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

import polymodal
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import read_pairs
from polymodal.index.store import query_matrix

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from image_centering import centered  # noqa: E402
from run_context import announce  # noqa: E402

# category -> caption words that name it
CATEGORIES = {
    "dog": "dog|dogs|puppy|puppies", "cat": "cat|cats|kitten", "horse": "horse|horses",
    "bicycle": "bike|bikes|bicycle|bicycles|bicyclist|cyclist", "car": "car|cars", "boat": "boat|boats|canoe|kayak",
    "ball": "ball|balls|football|soccer", "beach": "beach|sand|ocean", "snow": "snow|snowy|ski|skier|skiing",
    "water": "water|pool|lake|river", "grass": "grass|grassy|field", "mountain": "mountain|mountains|cliff|rock",
    "street": "street|road|sidewalk|city", "child": "child|children|boy|girl|kid|kids|baby", "man": "man|men",
    "woman": "woman|women", "bird": "bird|birds", "skateboard": "skateboard|skateboarder|skateboarding",
    "surfboard": "surf|surfer|surfboard|surfing", "food": "food|pizza|sandwich|plate|cake", "train": "train|trains",
    "bus": "bus|buses", "motorcycle": "motorcycle|motorbike|dirt bike",
}


def weak_labels(captions, caption_image, n_images: int) -> list[set[int]]:
    """Per photo: the indices of the categories its captions name."""
    patterns = [re.compile(rf"\b({words})\b") for words in CATEGORIES.values()]
    named = [set() for _ in range(n_images)]
    for caption, owner in zip(captions, caption_image):
        named[int(owner)].update(i for i, p in enumerate(patterns) if p.search(caption.lower()))
    return named


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", required=True, help="test pairs: JSONL of {\"image\", \"caption\"}")
    ap.add_argument("--ref-pairs", required=True, help="other photos, whose mean image embedding is subtracted")
    ap.add_argument("--models", nargs="+", default=["lite", "default"])
    ap.add_argument("--betas", nargs="+", type=float, default=[0.5, 1.0])
    args = ap.parse_args(argv)
    announce(__file__)
    try:
        test, ref = read_pairs(args.pairs), read_pairs(args.ref_pairs)
        named = weak_labels(test.captions, test.caption_image, len(test.images))
        keep = [i for i, s in enumerate(named) if s]
        for name in args.models:
            model = polymodal.load(name)
            labels = query_matrix(model.encode_text([f"a photo of a {c}." for c in CATEGORIES]))
            images = model.encode_image([test.images[i] for i in keep], batch_size=32)
            means = {"none": None, "ref-photos": model.encode_image(ref.images, batch_size=32).mean(0)}
            if hasattr(model, "class_matrix"):  # ConSE: an image is a mix of class prompts; their plain mean
                means["class-prompts"] = model.class_matrix.numpy().mean(0)
            for mean_name, mean in means.items():
                for beta in [0.0] if mean is None else args.betas:
                    scores = (images if mean is None else centered(images, mean, beta)) @ labels.T
                    right = [int(p) in named[i] for p, i in zip(scores.argmax(1), keep)]
                    print(json.dumps({"model": name, "mean": mean_name, "beta": beta, "photos": len(keep),
                                      "top1": round(float(np.mean(right)), 4)}), flush=True)
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
