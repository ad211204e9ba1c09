"""Cross-modal retrieval metrics over image-caption pairs (an image may have several captions)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polymodal.errors import PolymodalError


@dataclass
class Pairs:
    images: list[Path]  # unique images
    captions: list[str]
    caption_image: np.ndarray  # [C] index into images for each caption


def read_pairs(path: str | Path) -> Pairs:
    """JSONL rows {"image": path relative to the file, "caption": text}."""
    path = Path(path)
    if not path.is_file():
        raise PolymodalError(f"pairs file not found: {path}; pass a JSONL of {{\"image\", \"caption\"}} rows")
    index: dict[Path, int] = {}
    captions, owner = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image, caption = row["image"], row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PolymodalError(f"{path}:{n}: expected a JSON object with 'image' and 'caption'") from exc
            img = (path.parent / image).resolve()
            owner.append(index.setdefault(img, len(index)))
            captions.append(str(caption))
    if not captions:
        raise PolymodalError(f"{path} has no pairs")
    return Pairs(list(index), captions, np.asarray(owner))


def _ranks(sim: np.ndarray, positives: list[np.ndarray]) -> np.ndarray:
    """1-based rank of the best-ranked positive in each row of sim [Q, N]."""
    ranks = np.empty(len(sim), dtype=np.int64)
    for q, (row, pos) in enumerate(zip(sim, positives)):
        ranks[q] = int((row > row[pos].max()).sum()) + 1
    return ranks


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray) -> dict:
    """Text->image and image->text R@1/5/10 and median rank. Rows are L2-normalised embeddings."""
    sim = text_emb @ image_emb.T  # [C, I]
    t2i = _ranks(sim, [np.array([i]) for i in caption_image])
    owners = [np.flatnonzero(caption_image == i) for i in range(len(image_emb))]
    i2t = _ranks(sim.T, owners)
    out = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = round(float((ranks <= k).mean()), 4)
        out[f"{name}_median_rank"] = float(np.median(ranks))
    return out
