"""Zero-shot classification accuracy (top-1/top-5) with prompt ensembles over a JSONL of {"image", "label"} or a
folder of class folders."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from polymodal.apps.zeroshot import alike_labels_note, same_label
from polymodal.data.csv_rows import csv_label_rows, csv_names, is_csv
from polymodal.data.jsonl import data_file_image, existing_file, iter_json_rows, missing_image, report_skipped
from polymodal.data.parquet_rows import class_names, is_parquet, read_rows
from polymodal.errors import PolymodalError
from polymodal.registry import require_embedding

log = logging.getLogger(__name__)
LABELS_FORMAT = 'a JSONL of {"image": path relative to the file, "label": ...} rows (or a CSV with image,label columns)'

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a close-up photo of a {}.", "a photo of the {}.")


def read_labelled_images(path: str | Path, one_class: bool = False,
                         several_labels: bool = True) -> tuple[list[Path], list[str]]:
    """Images (resolved against the file's folder) and their labels, from a JSONL file or a folder of class
    folders (class_folders). Unusable rows (bad JSON, no image or label, missing image file) are counted and logged
    like eval retrieval's and eval vqa's; none left is an error. ``several_labels``: warn of a photo on rows of
    several labels as top-1 reads it (False: the caller says what it does with them)."""
    if Path(path).is_dir():
        images, labels = class_folders(Path(path))
    else:
        images, labels = _labelled_rows(Path(path))
    labels = _one_spelling(labels, path)
    if several_labels:
        _warn_of_several_labels(images, path)
    if not one_class:  # one class (and no candidate list): refused before a model loads or a training run starts
        _classes(labels)
    return images, labels


def class_folders(folder: Path) -> tuple[list[Path], list[str]]:
    """A labelled set laid out as ImageNet's and torchvision's ImageFolder: one subfolder per class, named as the
    class, holding its photos (in folders below it too, as ImageFolder reads them). Photos beside the class folders
    are skipped and counted (they have no class)."""
    from polymodal.data.images import IMAGE_EXTENSIONS

    def unsorted(where: Path, below: bool = False) -> Iterator[Path]:
        found = where.rglob("*") if below else where.iterdir()
        return (p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(where).parts))

    def photos(where: Path, below: bool = False) -> list[Path]:
        return sorted(p.resolve() for p in unsorted(where, below))

    images, labels = [], []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for sub in classes:
        # any(), not photos(): resolving every photo twice made listing 20,000 photos take 1.75 s, not 0.94
        if not any(unsorted(sub)) and any(p.is_dir() for p in sub.iterdir()):  # train/dog/1.jpg: "train" is no class
            raise PolymodalError(f"{sub} holds folders, not photos; pass the folder whose subfolders are the classes "
                                 f"(e.g. {sub})")
        found = photos(sub, below=True)
        images += found
        labels += [" ".join(sub.name.split())] * len(found)
    if not images:
        raise PolymodalError(f"{folder} holds no class folders of photos; pass a folder with one subfolder of photos "
                             f"per class (named as the class), or {LABELS_FORMAT}")
    wordnet = [sub.name for sub in classes if re.fullmatch(r"n\d{8}", sub.name)]
    if wordnet:  # ImageNet's own folders: "a photo of a n01440764." names nothing the text tower knows
        log.warning("%s: %d class folders are named by WordNet ids (first: %s), so the prompts hold the id, not a "
                    "class name: rename the folders to class names (tench, goldfish, ...)", folder, len(wordnet),
                    wordnet[0])
    report_skipped(folder, [(p, "a photo outside the class folders has no class") for p in photos(folder)],
                   len(images), "photos", f"pass {LABELS_FORMAT}", "file")
    return images, labels


def _labelled_rows(path: Path) -> tuple[list[Path], list[str]]:
    path = existing_file(path, "labels file", f"pass {LABELS_FORMAT}, or a folder of class folders")
    images, labels, skipped, repeats = [], [], [], {}
    inside = False  # images inside the file (Parquet): "<file>#<row>", no path to resolve
    if is_parquet(path):
        inside, rows = read_rows(path, LABEL_COLUMNS, f"pass {LABELS_FORMAT}")
        names = class_names(path)  # once: per row it opened the file again (10,000 rows: 1.36 s, now 0.08)
        source = ((where, _named_label(row, names), "") for where, row in rows)
    elif is_csv(path):
        from polymodal.data.pairs import IMAGE_COLUMNS  # a pairs CSV's names for its image column

        source = csv_label_rows(path, IMAGE_COLUMNS, LABEL_COLUMNS, f"pass {LABELS_FORMAT}")
    else:
        source = iter_json_rows(path, f"pass {LABELS_FORMAT}", ("label",), ("image",))
    for where, row, why in source:
        if row is None:
            skipped.append((where, why))
        elif row.get("image") in (None, "") or row.get("label") in (None, ""):
            skipped.append((where, "no image or label"))
        elif not isinstance(row["label"], str) or not row["label"].strip():
            # str() would make ["a", "b"] the class "['a', 'b']" and 0 the prompt "a photo of a 0."
            skipped.append((where, f"the label must be a class name (text), got {row['label']!r:.60}; top-1 ranks "
                                   "one label per photo: give its main class"))
        elif not inside and not (image := data_file_image(path.parent, row["image"])).is_file():
            skipped.append((where, missing_image(row["image"], path.parent)))
        else:
            image = row["image"] if inside else image
            label = " ".join(row["label"].split())
            key = (image, same_label(label))  # "horse " and "horse" are one class
            if key in repeats:  # a repeated row would count twice in the accuracy
                skipped.append((where, f"repeats {repeats[key]} (the same image and label)"))
                continue
            repeats[key] = where
            images.append(image)
            labels.append(label)
    report_skipped(path, skipped, len(images), "rows", f"pass {LABELS_FORMAT}")
    return images, labels


LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "category")  # a Parquet file's (Hugging Face's names)


def _named_label(row: dict, names: dict[str, list[str]]) -> dict:
    """A Parquet row with its label as "label": the first label column's value, a Hugging Face ClassLabel's number
    read as its class name."""
    column = next(c for c in LABEL_COLUMNS if c in row)
    value = row[column]
    if column in names and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names[column]):
        value = names[column][value]
    return {**row, "label": value}


def _warn_of_several_labels(images: list, source) -> None:
    """A photo on several rows with different labels can be right on one of them at most: top-1 ranks one class
    first. Counted as rows, such a set reads lower than the model is."""
    counts = Counter(images)
    several = [image for image, n in counts.items() if n > 1]
    if several:
        log.warning("%s: %d %s several labels (%d rows); top-1 can be right on one row of each at most, so top1 "
                    "reads low: give each photo its main class (first: %s)", source, len(several),
                    "photo carries" if len(several) == 1 else "photos carry", sum(counts[i] for i in several),
                    several[0])


def spellings(names) -> dict[str, str]:
    """same_label -> the first of ``names`` spelled that way: names that differ only in case (or Unicode form) are
    one class."""
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(same_label(name), name)
    return first


def _one_spelling(labels: list[str], source) -> list[str]:
    """Labels that differ only in case ("Elephant", "elephant") are one class, spelled as most rows spell it: as two
    classes they would compete with each other and lower top-1."""
    counts = Counter(labels)
    spelling = spellings(label for label, _ in counts.most_common())  # most common first; ties keep the file's order
    merged = sorted({label for label in counts if spelling[same_label(label)] != label})
    if merged:
        log.warning("%s: labels differing only in case (or in how an accent is encoded) are one class: %s", source,
                    "; ".join(f"{m!r} counted as {spelling[same_label(m)]!r}" for m in merged[:3])
                    + (f"; and {len(merged) - 3} more" if len(merged) > 3 else ""))
    return [spelling[same_label(label)] for label in labels]


def _classes(labels: list[str]) -> list[str]:
    """The sorted distinct labels; fewer than two is refused: every image would be "right", top-1 1.0."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        what = f"the label {classes[0]!r}" if classes else "no label"
        raise PolymodalError(f"every image has {what}; zero-shot accuracy ranks each image's label among the others: "
                             "label images of at least two classes")
    return classes


def read_classes(path: str | Path) -> list[str]:
    """The candidate classes of `eval zeroshot --classes`: a text file with one class per line (blank lines and
    lines starting with # ignored) or a JSON list of names; trimmed, and a name repeated (in any case) kept once."""
    path = existing_file(Path(path), "classes file", "pass a text file with one class name per line")
    from polymodal.data.jsonl import utf8_text

    if is_csv(path):  # (csv_names reads the file itself)
        names = csv_names(path, "class")
    else:
        with utf8_text(path) as f:
            text = f.read()
        if text.lstrip().startswith("{"):  # a JSON object or a JSONL file of rows: not one name per line
            raise PolymodalError(f"{path} holds JSON objects, not class names; pass one class name per line or a "
                                 "JSON list of names (the labelled rows go in --labels-file)")
        names = (json_names(path, text, "class") if text.lstrip().startswith("[") else
                 [line for line in text.splitlines() if not line.lstrip().startswith("#")])
    classes = list(spellings(name for name in (" ".join(n.split()) for n in names) if name).values())  # file order
    if len(classes) < 2:
        raise PolymodalError(f"{path} names {len(classes)} class{'' if len(classes) == 1 else 'es'}; zero-shot ranks "
                             "each image's label among at least two")
    return classes


def json_names(path: Path, text: str, what: str) -> list[str]:
    """The names of a file that is a JSON list (``what``: "class", "label"), or one error saying what it is instead."""
    import json

    try:
        names = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolymodalError(f"{path} is not valid JSON ({exc}); pass a JSON list of {what} names") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PolymodalError(f"{path}: a JSON file of {what} names must be a list of names (text)")
    return names


def keep_candidates(images: list, labels: list[str], classes: list[str], source) -> tuple[list, list[str], int]:
    """The rows whose label is one of ``classes`` (in any case), relabelled with the classes' spelling, and how
    many were left out (with a warning naming the first): a label no candidate names could never be ranked."""
    spelling = spellings(classes)
    kept = [(image, spelling[same_label(label)]) for image, label in zip(images, labels)
            if same_label(label) in spelling]
    outside = sorted({label for label in labels if same_label(label) not in spelling})
    if outside:
        left = len(labels) - len(kept)
        log.warning("%s: skipped %d row%s whose label is not in --classes (first: %r)", source, left,
                    "" if left == 1 else "s", outside[0])
    if not kept:
        raise PolymodalError(f"no label of {source} is one of the --classes names; check the classes file")
    return [k[0] for k in kept], [k[1] for k in kept], len(labels) - len(kept)


def zeroshot_accuracy(model, images, labels: list[str], templates=TEMPLATES, image_emb: np.ndarray | None = None,
                      progress: bool = False, details: list | None = None, classes: list[str] | None = None,
                      class_emb: np.ndarray | None = None) -> dict:
    """Top-1/top-5 of each image's label among the candidate classes' prompt embeddings: ``classes`` (say, all of
    a dataset's), or else the distinct labels, so that figures on two samples of a dataset compare only when they
    share the classes. ``balanced_top1`` is the mean over the labels present of each one's top-1; ``images``
    counts rows, ``photos`` distinct photos, ``unreadable`` the photos left out as unreadable, ``not_finite`` those
    left out because the model embeds them as NaN or inf (a class it embeds so is an error). ``details``, a list,
    gets one dict per row: its image, label, the predicted class and the label's rank (1 = top), or why its image
    could not be read ("error"). ``class_emb``
    (training's per-epoch score, from tower outputs it keeps): the classes' prompt embeddings, in the order of
    ``classes`` (or of the sorted distinct labels), instead of model.label_embeddings."""
    require_embedding(model)
    # labels pair with images by position: a string ("dog") would be read as the classes "d", "o", "g", and a list
    # of another length silently dropped labels (or ended in an IndexError)
    from polymodal.models.inputs import as_images

    images = as_images(images)  # one path is one image, as encode_image reads it
    if isinstance(labels, str) or len(labels) != len(images) or (image_emb is not None
                                                                   and len(image_emb) != len(images)):
        if isinstance(labels, str):
            raise PolymodalError(f"labels is one string ({labels!r:.40}); pass a list with one label per image, "
                                 f"e.g. [{labels!r:.40}]")
        rows = "" if image_emb is None else f" and {len(image_emb)} rows of image_emb"
        raise PolymodalError(f"zero-shot accuracy needs one label per image: got {len(images)} images, "
                             f"{len(labels)} labels{rows}")
    if classes is None:
        classes = _classes(labels)
    else:
        spelling = spellings(classes)  # "Cat" is the class "cat", as the CLI reads it: one spelling each, the first
        classes = list(spelling.values())
        labels = [spelling.get(same_label(label), label) for label in labels]
        outside = sorted(set(labels) - set(classes))
        if outside:
            raise PolymodalError(f"{len(outside)} label(s) are not among the classes (first: {outside[0]!r}); "
                                 "add them to the classes or leave those images out")
    from polymodal.apps.zeroshot import ZeroShotMixin

    # our models show a bar over the prompts; a model of your own needs only label_embeddings(classes, templates)
    if class_emb is None:
        class_emb = (model.label_embeddings(classes, templates, progress=progress) if isinstance(model, ZeroShotMixin)
                     else model.label_embeddings(classes, templates))
        from polymodal.eval.retrieval import check_finite_texts

        check_finite_texts(class_emb, classes, "class")  # (training passes its own class_emb: a NaN there ranks last)
    if note := alike_labels_note(classes, class_emb):  # their ties count as misses below: say why
        log.warning("%s", note)
    if image_emb is None:  # an unreadable image is left out with a warning, not the end of the evaluation
        from polymodal.eval.retrieval import NOT_FINITE, encode_readable

        reasons: dict = {}
        emb, rows = encode_readable(model, images, progress=progress, reasons=reasons)
        # photos, not rows; those the model embeds as NaN counted apart
        nan = len({str(images[i]) for i, why in reasons.items() if why == NOT_FINITE})
        unreadable = len(set(map(str, images))) - len({str(images[i]) for i in rows}) - nan
        # (the rows as given, for the error items below)
        given, images, labels = list(zip(images, labels)), [images[i] for i in rows], [labels[i] for i in rows]
    else:
        emb, unreadable, nan, reasons, given = image_emb, 0, 0, {}, []
    scores = emb @ class_emb.T
    truth = np.array([classes.index(label) for label in labels])
    # 0-based rank: the classes scoring at least the label's, as retrieval ranks. A tie with another class counts
    # against the image (classes the model embeds alike, e.g. emoji it reads as one unknown token, are not told
    # apart; sorting would give the tie to the first class by name), and a row with NaN or inf ranks last
    own = scores[np.arange(len(truth)), truth]
    rank = np.where(np.isfinite(scores).all(axis=1), (scores >= own[:, None]).sum(axis=1) - 1, len(classes) - 1)
    if details is not None:
        # "predicted" agrees with "rank": a label tied with another class for the top is a miss, so the class named
        # is that other one (the first by sort order would often be the label itself, a miss reading as a hit)
        others = np.where(np.arange(len(classes)) == truth[:, None], -np.inf, scores).argmax(axis=1)
        top = np.where(rank == 0, truth, others)
        scored = iter({"image": str(image), "label": label, "predicted": classes[int(t)], "rank": int(r) + 1}
                      for image, label, t, r in zip(images, labels, top, rank))
        # an unreadable photo gets an error item in its place, as eval vqa's and eval captions' --out give it
        details.extend({"image": str(given[i][0]), "label": given[i][1], "error": reasons[i]} if i in reasons
                       else next(scored) for i in range(len(labels) + len(reasons)))
    per_label = [float((rank[truth == c] < 1).mean()) for c in np.unique(truth)]
    return {"top1": round(float((rank < 1).mean()), 4), "top5": round(float((rank < 5).mean()), 4),
            "balanced_top1": round(float(np.mean(per_label)), 4), "images": len(labels),
            "photos": len(set(map(str, images))), "unreadable": unreadable, "not_finite": nan,
            "classes": len(classes)}
