"""Image captioning on held-out photos: the trained captioner vs retrieval captioning, BLEU-1..4 and CIDEr-D.

    python benchmarks/captioning.py                      # train on 80% of Flickr8k dev's photos, score the rest
    python benchmarks/captioning.py --save-builtin       # then train on all of it (+ COCO mini) and ship 'captioner'
    python benchmarks/captioning.py --run DIR            # keep the held-out run in DIR; a later call reuses it
    python benchmarks/captioning.py --run DIR --onnx     # also its ONNX export, fp32 and int8 step graph
    python benchmarks/captioning.py --photos 40 --epochs 1   # a smoke run in about a minute (figures mean nothing)

Held out: the other 20% of Flickr8k dev (by photo, seeded) and the 80 COCO mini photos (another photo source).
Peer: retrieval captioning, each photo gets the training caption closest to it in `lite`'s space (`polymodal search
--texts CAPTIONS --image PHOTO`; `lite` was fit on no caption data, `default` saw these photos so is left out).
Prints one JSON line per (system, set); captioning speed in photos/s on this machine.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402


def write_pairs(pairset, path: Path) -> Path:
    path.write_text("".join(json.dumps({"image": str(p.image), "caption": p.caption}) + "\n" for p in pairset.pairs))
    return path


def first_photos(pairset, limit: int | None):
    return pairset if limit is None else pairset.subset(range(min(limit, len(pairset.images))))


def train(pairs: list[Path], out: Path, epochs: int) -> Path:
    """Validation (which epoch is kept) is 10% of the training photos: the held-out sets choose nothing."""
    from polymodal.train.captioning import CaptionRecipe, train_captioner

    recipe = CaptionRecipe.from_dict({"pairs": [str(p) for p in pairs], "out": str(out), "epochs": epochs,
                                      "val_fraction": 0.1,
                                      "patience": 0, "val_images": 100})
    result = train_captioner(recipe, overwrite=True)
    print(json.dumps({"trained": str(out), **{k: v for k, v in result.items() if not isinstance(v, dict)}}), flush=True)
    return out / "model"


def retrieval_captions(train_set, photos: list) -> list[str]:
    import polymodal
    from polymodal.apps.text_search import search_texts

    lite = polymodal.load("lite")
    return [hits[0].text for hits in search_texts(lite, lite.encode_image(photos), train_set.captions, k=1)]


def onnx_exports(model, out: Path) -> dict:
    """The model's ONNX export (fp32; parity checked on the built-in sample photos) and a copy whose step graph is
    int8 dynamic, loaded for onnxruntime: {"fp32": ..., "int8 step": ...}."""
    import shutil

    import polymodal
    from polymodal.data.samples import sample_photos
    from polymodal.export import variants as V
    from polymodal.export.caption_export import export_captioner_onnx

    export_captioner_onnx(model, out / "fp32", [a for a, _ in sample_photos().values()], variants=[])
    shutil.copytree(out / "fp32", out / "int8")
    V.int8_dynamic(out / "fp32" / "step.onnx", out / "int8" / "step.onnx")
    return {"fp32": polymodal.load(str(out / "fp32"), runtime="onnx"),
            "int8 step": polymodal.load(str(out / "int8"), runtime="onnx")}


def score(system: str, name: str, pairset, captions: list[str], seconds: float) -> None:
    from polymodal.eval.captions import caption_scores

    refs = [pairset.captions_of(i) for i in range(len(pairset.images))]
    result = caption_scores(refs, captions)
    print(json.dumps({"system": system, "set": name, "photos": len(captions),
                      **{k: round(v, 4) for k, v in result.items()},
                      "photos_per_s": round(len(captions) / seconds, 2),
                      "examples": [[Path(str(pairset.images[i])).name, captions[i]]
                                   for i in range(min(3, len(captions)))]}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--no-repeat", type=int, nargs="+", default=[3, 0],
                    help="beam search's no-repeat n-gram sizes to score on the same model (0: repeats allowed)")
    ap.add_argument("--heldout-fraction", type=float, default=0.2)
    ap.add_argument("--photos", type=int, default=None,
                    help="use only the first N photos of each set (a smoke run; the full run takes over 10 minutes)")
    ap.add_argument("--save-builtin", action="store_true", help="also train on all the photos and ship 'captioner'")
    ap.add_argument("--skip-heldout", action="store_true", help="with --save-builtin: only train and ship")
    ap.add_argument("--run", type=Path, default=None,
                    help="keep the held-out training run here (reused when DIR/model exists: decoding changes are "
                         "then scored on the same model in seconds)")
    ap.add_argument("--onnx", action="store_true",
                    help="also score the held-out model's ONNX export: fp32 graphs and the int8 (dynamic) step graph")
    args = ap.parse_args(argv)
    if args.photos is not None and args.photos < 10:  # the arguments first: they need no data to be checked
        ap.error(f"--photos {args.photos} is too few to split; pass 10 or more")
    announce(__file__)

    from polymodal.data.pairs import open_pair_image, read_pair_source, split_by_image

    for needed in (SHARED_DATA / "flickr8k-dev" / "pairs.jsonl", SHARED_DATA / "coco-mini-train" / "pairs.jsonl"):
        if not needed.is_file():
            print(f"needs {needed} (see ../shared/data/README.md)", file=sys.stderr)
            return 2
    flickr, coco = (first_photos(read_pair_source(SHARED_DATA / name / "pairs.jsonl"), args.photos)
                    for name in ("flickr8k-dev", "coco-mini-train"))
    train_set, held = split_by_image(flickr, args.heldout_fraction, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_heldout:
            import polymodal

            run = args.run or tmp / "run"
            folder = run / "model" if (run / "model").is_dir() else train(
                [write_pairs(train_set, tmp / "train.jsonl")], run, args.epochs)
            model = polymodal.load(str(folder))
            systems = {f"captioner beam {args.beam} no-repeat {n}":
                       lambda photos, n=n: model.caption(photos, beam=args.beam, no_repeat=n) for n in args.no_repeat}
            if args.onnx:
                for variant, exported in onnx_exports(model, tmp / "onnx").items():
                    systems[f"captioner beam {args.beam} onnx {variant}"] = (
                        lambda photos, m=exported: m.caption(photos, beam=args.beam))
            for name, pairset in (("flickr8k-heldout", held), ("coco-mini", coco)):
                photos = [open_pair_image(p) for p in pairset.images]
                for system, write in systems.items():
                    t0 = time.perf_counter()
                    captions = write(photos)
                    score(system, name, pairset, captions, time.perf_counter() - t0)
                t0 = time.perf_counter()
                captions = retrieval_captions(train_set, photos)
                score("retrieval lite", name, pairset, captions, time.perf_counter() - t0)
        if args.save_builtin:
            import subprocess

            both = [SHARED_DATA / "flickr8k-dev" / "pairs.jsonl", SHARED_DATA / "coco-mini-train" / "pairs.jsonl"]
            folder = train(both, tmp / "all", args.epochs)
            subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py"),
                            str(folder), "captioner"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
