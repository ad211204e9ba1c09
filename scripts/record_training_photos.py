"""Record which photos a model folder was trained on (training_photos.txt), for models trained before polymodal kept
that list itself; `polymodal eval` then warns when it scores any of them.

    python scripts/record_training_photos.py polymodal/resources/models/default \
        --pairs ../shared/data/flickr8k-dev/pairs.jsonl ../shared/data/coco-mini-train/pairs.jsonl
    python scripts/record_training_photos.py runs/vqa/model --qa train.jsonl
"""

import argparse
import logging
import sys

from polymodal.data.pairs import read_pair_sources
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa
from polymodal.training_photos import model_folder, photo_hashes, write_training_photos


def main(args) -> int:
    folder = model_folder(args.model)
    if folder is None:
        raise PolymodalError(f"{args.model} is not a model folder; pass a saved model (RUN/model) or a built-in name")
    images = list(read_pair_sources(args.pairs).images) if args.pairs else []
    images += sorted({str(r.image) for r in read_qa(args.qa)}) if args.qa else []
    if not images:
        raise PolymodalError("no photos to record; pass --pairs and/or --qa files the model was trained on")
    hashes = photo_hashes(images)
    write_training_photos(folder, hashes)
    print(f"{folder}: recorded {len(hashes):,} training photos")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model folder, or a built-in name")
    ap.add_argument("--pairs", nargs="+", help="image-caption files it was trained on")
    ap.add_argument("--qa", nargs="+", help="QA files it was trained on")
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.WARNING)
    try:
        sys.exit(main(ap.parse_args()))
    except PolymodalError as exc:
        sys.exit(f"record_training_photos: {exc}")
