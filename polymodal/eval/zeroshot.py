"""Zero-shot classification accuracy (top-1/top-5) with prompt ensembles over a JSONL of {"image", "label"}."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from polymodal.data.jsonl import existing_file, iter_json_rows, missing_image, report_skipped
from polymodal.errors import PolymodalError
from polymodal.registry import require_embedding

log = logging.getLogger(__name__)
LABELS_FORMAT = 'a JSONL of {"image": path relative to the file, "label": ...} rows'

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a close-up photo of a {}.", "a photo of the {}.")


def read_labelled_images(path: str | Path) -> tuple[list[Path], list[str]]:
    """Images (resolved against the file's folder) and their labels. Unusable rows (bad JSON, no image or label,
    missing image file) are counted and logged like eval retrieval's and eval vqa's; none left is an error."""
    path = existing_file(Path(path), "labels file", f"pass {LABELS_FORMAT}")
    images, labels, skipped, repeats = [], [], [], {}
    for where, row, why in iter_json_rows(path, f"pass {LABELS_FORMAT}"):
        if row is None:
            skipped.append((where, why))
        elif row.get("image") in (None, "") or row.get("label") in (None, ""):
            skipped.append((where, "no image or label"))
        elif not isinstance(row["label"], str) or not row["label"].strip():
            # str() would make ["a", "b"] the class "['a', 'b']" and 0 the prompt "a photo of a 0."
            skipped.append((where, f"the label must be a class name (text), got {row['label']!r:.60}; a photo of "
                                   "several classes takes one row per label"))
        elif not (path.parent / str(row["image"])).is_file():
            skipped.append((where, missing_image(row["image"], path.parent)))
        else:
            image, label = (path.parent / str(row["image"])).resolve(), " ".join(row["label"].split())
            key = (image, label.casefold())  # "horse " and "horse" are one class
            if key in repeats:  # a repeated row would count twice in the accuracy
                skipped.append((where, f"repeats {repeats[key]} (the same image and label)"))
                continue
            repeats[key] = where
            images.append(image)
            labels.append(label)
    report_skipped(path, skipped, len(images), "rows", f"pass {LABELS_FORMAT}")
    labels = _one_spelling(labels, path)
    _classes(labels)  # one class: refused before a model loads or a training run starts
    return images, labels


def _one_spelling(labels: list[str], source) -> list[str]:
    """Labels that differ only in case ("Elephant", "elephant") are one class, spelled as most rows spell it: as two
    classes they would compete with each other and lower top-1."""
    from collections import Counter

    counts = Counter(labels)
    spelling = {}
    for label, _ in counts.most_common():  # most common first; ties keep the file's order
        spelling.setdefault(label.casefold(), label)
    merged = sorted({label for label in counts if spelling[label.casefold()] != label})
    if merged:
        log.warning("%s: labels differing only in case are one class: %s", source,
                    "; ".join(f"{m!r} counted as {spelling[m.casefold()]!r}" for m in merged[:3])
                    + (f"; and {len(merged) - 3} more" if len(merged) > 3 else ""))
    return [spelling[label.casefold()] for label in labels]


def _classes(labels: list[str]) -> list[str]:
    """The sorted distinct labels; fewer than two is refused: every image would be "right", top-1 1.0."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        what = f"the label {classes[0]!r}" if classes else "no label"
        raise PolymodalError(f"every image has {what}; zero-shot accuracy ranks each image's label among the others: "
                             "label images of at least two classes")
    return classes


def zeroshot_accuracy(model, images, labels: list[str], templates=TEMPLATES, image_emb: np.ndarray | None = None,
                      progress: bool = False, details: list | None = None) -> dict:
    """Top-1/top-5 of each image's label among all the labels' prompt embeddings. ``details``, a list, gets one
    dict per scored image: its label, the predicted class and the label's rank (1 = top)."""
    require_embedding(model)
    classes = _classes(labels)
    class_emb = model.label_embeddings(classes, templates)
    if image_emb is None:  # an unreadable image is left out with a warning, not the end of the evaluation
        from polymodal.eval.retrieval import encode_readable

        emb, rows = encode_readable(model, images, progress=progress)
        images, labels = [images[i] for i in rows], [labels[i] for i in rows]
    else:
        emb = image_emb
    order = np.argsort(-(emb @ class_emb.T), axis=1)
    truth = np.array([classes.index(label) for label in labels])
    rank = (order == truth[:, None]).argmax(axis=1)
    if details is not None:
        details.extend({"image": str(image), "label": label, "predicted": classes[int(top)], "rank": int(r) + 1}
                       for image, label, top, r in zip(images, labels, order[:, 0], rank))
    return {"top1": round(float((rank < 1).mean()), 4), "top5": round(float((rank < 5).mean()), 4),
            "images": len(labels), "classes": len(classes)}
