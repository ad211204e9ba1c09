"""What an evaluation's figures rest on, said beside them: rows of the data that were skipped, photos the model was
trained on, and sets too small for a metric to mean anything. Each is a warning on stderr and, where it is a count,
a field of the JSON line, since scripts and papers read the JSON, not the log."""

from __future__ import annotations

import logging

from polymodal.training_photos import count_seen_photos

log = logging.getLogger(__name__)

FEW_PHOTOS = 20  # below this a recall or a CIDEr-D barely tells two models apart (training warns at the same count)


def data_caveats(model: str, images, skipped_rows: int, split: str | None = None, limit: int | None = None) -> dict:
    """{"skipped_rows", "seen_in_training", "seen_in_validation"} (and "split" when `--split` chose one, "limit"
    when `--limit` did) for the JSON line; the seen counts are None when the model records no training photos
    (`lite`, an ONNX export of such a model, a model trained before polymodal kept them). seen_in_validation:
    photos that chose the model's epoch (0 for a model trained before polymodal recorded them)."""
    seen = count_seen_photos(model, list(images))
    return {**({"split": split} if split is not None else {}), **({"limit": limit} if limit is not None else {}),
            "skipped_rows": skipped_rows,
            "seen_in_training": None if seen is None else seen[0],
            "seen_in_validation": None if seen is None else seen[1]}


def warn_of_few(count: int, what: str, metric: str) -> None:
    if count < FEW_PHOTOS:
        what = what[:-1] if count == 1 and what.endswith("s") else what  # "only 1 photo"
        log.warning("only %d %s: %s over so few says little; evaluate on %d or more", count, what, metric, FEW_PHOTOS)


COPIES_IN_RETRIEVAL = "a caption ties with its photo's copy and ties count as misses, so recall comes out low"


def warn_of_copies(images, effect: str = COPIES_IN_RETRIEVAL) -> None:
    """The same photo twice under two names: in text<->image retrieval each of its captions ties with the copy, and
    a tie counts as a miss, so recall comes out lower than the model's (``effect`` says what a copy does elsewhere)."""
    from polymodal.training_photos import copies_within

    groups = copies_within(images)
    if groups:
        first = groups[0]
        log.warning("%d photos are copies of others in this set (the same bytes under other names, e.g. %s and %s): "
                    "%s; evaluate without the copies", sum(len(g) - 1 for g in groups), images[first[0]],
                    images[first[1]], effect)


SHARED_CAPTIONS = 0.01  # the share of caption texts under several photos from which image->text recall is warned of


def warn_of_shared_captions(captions, caption_image) -> None:
    """One caption text under two photos ("a dog runs"): image->text ties it with the other photo's copy of it, and a
    tie counts as a miss."""
    photos: dict[str, set] = {}
    for text, image in zip(captions, caption_image):
        photos.setdefault(" ".join(str(text).split()).casefold(), set()).add(int(image))
    shared = [text for text, owners in photos.items() if len(owners) > 1]
    if shared and len(shared) >= SHARED_CAPTIONS * len(photos):  # Flickr8k dev: 3 of 4,996, too few to matter
        log.warning("%d of %d caption texts belong to several photos (e.g. %r): image->text recall counts the other "
                    "photo's identical caption as a tie, and ties as misses", len(shared), len(photos), shared[0][:60])


def warn_of_certain_recall(images: int, captions: int, ks=(1, 5, 10), fewest_captions: int = 1) -> None:
    """R@k is 1.0 by construction once k reaches the worst possible rank: the number of images for text->image;
    for image->text, the captions less the fewest any one image has, plus one (its best caption can only be
    outranked by the other images' captions)."""
    worst_i2t = captions - max(1, fewest_captions) + 1
    certain = [f"t2i_R@{k}" for k in ks if k >= images] + [f"i2t_R@{k}" for k in ks if k >= worst_i2t]
    if certain:
        log.warning("%s %s 1.0 by construction with %d images and %d captions (k reaches the candidates)",
                    ", ".join(certain), "is" if len(certain) == 1 else "are", images, captions)
