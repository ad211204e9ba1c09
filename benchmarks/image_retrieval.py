"""Image->image retrieval ("more like this", `polymodal eval images`) on real photos, against chance.

There is no labelled photo set here, so the Flickr8k dev photos' captions give labels: a photo gets a group (dog,
bicycle, snow, beach, skateboard, ball game, climbing) when at least 3 of its 5 captions name it and none names
another group; the other photos are left out. Coarse and unbalanced (about half are dogs): a check that the
metric and the towers behave, not a benchmark to compare with papers.

    python benchmarks/image_retrieval.py [--models lite default] [--labels-out labels.jsonl]

Prints a context line, then one JSON line per model and one for random unit vectors (chance) with R@1,
R_precision, MAP@R and each one's ratio to chance. `default` was trained on these photos (its figures read high).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run_context import SHARED_DATA, announce  # noqa: E402

GROUPS = {"dog": "dog|dogs|puppy|puppies",
          "bicycle": "bike|bikes|bicycle|bicycles|biker|bikers|cyclist|cyclists|bmx",
          "snow": "snow|snowy|ski|skier|skiers|skiing|snowboard|snowboarder|snowboarding",
          "beach": "beach|ocean|surf|surfer|surfing|surfboard|waves|wave|sea",
          "skateboard": "skateboard|skateboarder|skateboarding|skater|skateboards|skatepark",
          "ball game": "soccer|football|basketball|baseball|rugby|volleyball|tennis",
          "climbing": "climber|climbing|climbs|climb|climbers"}
FIGURES = ("R@1", "R_precision", "MAP@R")


def caption_labels(pairs: Path) -> list[dict]:
    """{"image", "label"} rows: the one group at least 3 of a photo's captions name, when no caption names another."""
    words = defaultdict(list)
    for line in pairs.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        words[row["image"]].append(set(re.findall(r"[a-z]+", row["caption"].lower())))
    groups = {name: set(kw.split("|")) for name, kw in GROUPS.items()}
    rows = []
    for image, captions in words.items():
        named = {g: sum(bool(ws & kw) for ws in captions) for g, kw in groups.items()}
        named = {g: n for g, n in named.items() if n}
        if len(named) == 1 and max(named.values()) >= 3:
            rows.append({"image": str(pairs.parent / image), "label": next(iter(named))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lite", "default"])
    ap.add_argument("--labels-out", help="also write the labelled rows here (JSONL for `polymodal eval images`)")
    args = ap.parse_args(argv)
    announce(__file__)
    pairs = SHARED_DATA / "flickr8k-dev" / "pairs.jsonl"
    if not pairs.is_file():
        print(f"error: this benchmark needs {pairs} (the shared Flickr8k dev photos)", file=sys.stderr)
        return 2
    import polymodal
    from polymodal.eval.image_retrieval import image_retrieval_metrics

    rows = caption_labels(pairs)
    if args.labels_out:
        Path(args.labels_out).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    labels = [r["label"] for r in rows]
    base = {"photos": len(rows), "classes": dict(Counter(labels).most_common())}
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(rows), 384))
    chance = image_retrieval_metrics(noise / np.linalg.norm(noise, axis=1, keepdims=True), labels)
    print(json.dumps({"model": "chance (random unit vectors)", **base, **{k: chance[k] for k in FIGURES}}))
    for name in args.models:
        start = time.perf_counter()
        emb = polymodal.load(name).encode_image([r["image"] for r in rows])
        seconds = time.perf_counter() - start
        m = image_retrieval_metrics(emb, labels)
        print(json.dumps({"model": name, **base, **{k: m[k] for k in FIGURES},
                          **{f"{k}_vs_chance": round(m[k] / chance[k], 2) for k in FIGURES},
                          "embed_s": round(seconds, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
