"""Zero-shot classification accuracy (top-1/top-5) with prompt ensembles over a JSONL of {"image", "label"}."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from polymodal.errors import PolymodalError

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a close-up photo of a {}.", "a photo of the {}.")


def read_labelled_images(path: str | Path) -> tuple[list[Path], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise PolymodalError(f"labels file not found: {path}; pass a JSONL of {{\"image\", \"label\"}} rows")
    images, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            images.append((path.parent / row["image"]).resolve())
            labels.append(str(row["label"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PolymodalError(f"{path}:{n}: expected a JSON object with 'image' and 'label'") from exc
    if not images:
        raise PolymodalError(f"{path} has no rows")
    return images, labels


def zeroshot_accuracy(model, images, labels: list[str], templates=TEMPLATES, image_emb: np.ndarray | None = None) -> dict:
    classes = sorted(set(labels))
    class_emb = model.label_embeddings(classes, templates)
    emb = model.encode_image(images) if image_emb is None else image_emb
    order = np.argsort(-(emb @ class_emb.T), axis=1)
    truth = np.array([classes.index(label) for label in labels])
    rank = (order == truth[:, None]).argmax(axis=1)
    return {"top1": round(float((rank < 1).mean()), 4), "top5": round(float((rank < 5).mean()), 4),
            "images": len(images), "classes": len(classes)}
