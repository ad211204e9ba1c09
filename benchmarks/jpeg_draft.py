"""Camera-sized JPEGs: preprocessing time and retrieval with reduced-scale decoding (JPEG draft) vs full decoding.

    python benchmarks/jpeg_draft.py [--pairs ../shared/data/coco-mini-train/pairs.jsonl] [--size 4032x3024]

A lite-tower, fusion-encoder or captioner transform decodes a large JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling; ImageTransform.draft_size) instead of decoding every pixel and then shrinking it to 224. This measures, in
one run, on the pairs file's photos written as camera-sized JPEGs (upscaled with a little sensor-like noise, quality
90: the shared data holds no camera-resolution photos), per photo: decode + transform milliseconds each way (one JSON
line per way, and a ratio line), the cosine between the two ways' image embeddings, and text->image / image->text
R@1/R@5 each way. With a captioner (`--model captioner`): each way's captions (beam 3), their CIDEr-D and BLEU-4
against the pairs' captions, and how many photos get the same caption both ways.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

DEFAULT_PAIRS = SHARED_DATA / "coco-mini-train" / "pairs.jsonl"


def camera_jpegs(photos: list, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """Each photo resized to `size` with +-6 levels of noise (so the JPEG holds detail to decode), quality 90."""
    rng = np.random.default_rng(seed)
    out = []
    for p in photos:
        a = np.asarray(Image.open(p).convert("RGB").resize(size, Image.BICUBIC)).astype(np.int16)
        a = np.clip(a + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _transform_ms(transform, jpegs: list[bytes]) -> tuple[np.ndarray, float]:
    """The photos' pixels and the milliseconds per photo to decode and transform them (best of two passes: the
    first may pay for cold caches)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        pixels = np.concatenate([transform(jpegs[i : i + 16]) for i in range(0, len(jpegs), 16)])
        best = min(best, time.perf_counter() - start)
    return pixels, 1000 * best / len(jpegs)


def _captions(model, full_size, jpegs: list[bytes], captions: list[tuple[str, int]], size: str) -> int:
    """A captioner: each way's decode + transform time and captions (beam 3), scored against the pairs' captions."""
    from polymodal.eval.captions import caption_scores

    refs = [[c for c, i in captions if i == k] for k in range(len(jpegs))]
    ms, said = {}, {}
    for way, transform in (("full", full_size), ("draft", model.transform)):
        _, ms[way] = _transform_ms(transform, jpegs)
        model.transform, draft = transform, model.transform  # the captioner reads photos through model.transform
        said[way] = model.caption(jpegs, beam=3)
        model.transform = draft
        scores = caption_scores(refs, said[way])
        print(json.dumps({"way": way, "photos": len(jpegs), "size": size, "decode_transform_ms": round(ms[way], 1),
                          "cider": round(scores["cider"], 4), "bleu4": round(scores["bleu4"], 4)}), flush=True)
    same = sum(a == b for a, b in zip(said["full"], said["draft"]))
    print(json.dumps({"ratio": "full / draft decode_transform_ms", "value": round(ms["full"] / ms["draft"], 2),
                      "same_caption": f"{same}/{len(jpegs)}"}), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="image-caption pairs (JSONL)")
    ap.add_argument("--model", default="default",
                    help="a model with a crop-box transform: a lite-tower embedding model or a captioner")
    ap.add_argument("--size", default="4032x3024", help="camera photo size, WxH (default: a 12 MP phone)")
    ap.add_argument("--limit", type=int, default=80, help="photos used (default 80)")
    args = ap.parse_args(argv)
    announce(__file__)

    import polymodal
    from polymodal.eval.retrieval import read_pairs, retrieval_metrics

    if not Path(args.pairs).is_file():
        print(f"no pairs file at {args.pairs}; pass --pairs", file=sys.stderr)
        return 2
    pairs = read_pairs(args.pairs)
    keep = list(range(min(args.limit, len(pairs.images))))
    captions = [(c, i) for c, i in zip(pairs.captions, pairs.caption_image) if i < len(keep)]
    size = tuple(int(x) for x in args.size.lower().split("x"))
    jpegs = camera_jpegs([pairs.images[i] for i in keep], size)
    from polymodal.errors import PolymodalError

    try:  # a mistyped --model: one line, not a traceback
        model = polymodal.load(args.model)
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = model.transform
    if t.draft_size is None:
        print(f"{args.model}'s transform decodes at full size (a CLIP checkpoint?); pass a lite-tower model",
              file=sys.stderr)
        return 2
    full_size = type("FullDecode", (type(t),), {"draft_size": None}).from_dict(t.to_dict())  # the same, no draft
    if hasattr(model, "caption"):
        return _captions(model, full_size, jpegs, captions, args.size)
    texts = model.encode_text([c for c, _ in captions])
    ms, emb = {}, {}
    for way, transform in (("full", full_size), ("draft", t)):
        pixels, ms[way] = _transform_ms(transform, jpegs)
        emb[way] = np.concatenate([model.embed_pixels(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
        m = retrieval_metrics(emb[way], texts, np.array([i for _, i in captions]))
        print(json.dumps({"way": way, "photos": len(jpegs), "size": args.size, "decode_transform_ms": round(ms[way], 1),
                          **{k: round(v, 4) for k, v in m.items() if k.endswith(("R@1", "R@5"))}}), flush=True)
    cos = (emb["full"] * emb["draft"]).sum(1)
    print(json.dumps({"ratio": "full / draft decode_transform_ms", "value": round(ms["full"] / ms["draft"], 2),
                      "embedding_cosine_min": round(float(cos.min()), 4),
                      "embedding_cosine_mean": round(float(cos.mean()), 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
