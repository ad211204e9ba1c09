"""Cross-modal retrieval metrics over image-caption pairs (an image may have several captions)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.product_blocks import Product, per_block

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    images: list[Path]  # unique images
    captions: list[str]
    caption_image: np.ndarray  # [C] index into images for each caption
    names: list[str] | None = None  # how to name each image in output: a shard's image is bytes, named "<shard>#<member>"
    unreadable: int = 0  # images read_pairs left out (a shard member that does not decode): eval's JSON counts them
    # (name, its captions, why) of each image left out as unreadable (pairs_of_images' reasons): --out's error items
    left_out: list[tuple[str, list[str], str]] = field(default_factory=list)

    def image_names(self) -> list[str]:
        return list(self.names) if self.names is not None else [str(image) for image in self.images]


def read_pairs(path: str | Path | Sequence[str | Path], limit: int | None = None) -> Pairs:
    """Image-caption pairs from any source `polymodal.data.pairs.read_pair_source` reads: a JSONL of
    {"image": path relative to the file, "caption": text} rows, a CSV (image,caption or filepath,title), a folder
    of images with same-named .txt captions, or tar shards; a list or tuple is several such sources read as one
    (as training's --pairs). Unusable rows are skipped with a logged warning.
    Images inside tar shards are returned as their encoded bytes (which every encoder accepts), checked to decode.
    ``limit``: only the first N images and their captions (`eval retrieval --limit`); the others are not read."""
    from polymodal.data.pairs import read_pair_source, read_pair_sources
    from polymodal.data.shards import split_tar_ref
    from polymodal.models.inputs import each_or_error, readable_results

    pairset = read_pair_sources(path) if isinstance(path, (list, tuple)) else read_pair_source(path)
    if limit is not None:  # before the shards' photos are read and checked: a quick look reads only its N
        pairset = pairset.subset(range(min(limit, len(pairset.images))))
    results = each_or_error(lambda one: [_shard_image(one[0]) if split_tar_ref(one[0]) is not None else Path(one[0])],
                            list(pairset.images), batch_size=1)
    rows = readable_results(results, "image", pairset.source)
    pairs = Pairs([r if isinstance(r, (bytes, Path)) else None for r in results], pairset.captions,
                  pairset.caption_image, [str(image) for image in pairset.images])
    if len(rows) == len(results):
        return pairs
    kept = pairs_of_images(pairs, np.asarray(rows, dtype=np.int64),
                           {i: r for i, r in enumerate(results) if isinstance(r, str)})
    kept.unreadable = len(results) - len(rows)
    return kept


def _shard_image(ref: str) -> bytes:
    """The encoded bytes of "<shard>#<member>", decoded once here: an encoder given the bytes could only report
    "the given bytes" as unreadable, not which member of which shard."""
    from polymodal.data.images import load_image
    from polymodal.data.shards import image_bytes

    data = image_bytes(ref)
    try:
        load_image(data)
    except PolymodalError as exc:
        raise PolymodalError(f"{ref}: {exc}") from exc
    return data


def inside_as_bytes(image):
    """An image inside a tar shard or a Parquet file ("<file>#<member or row>") -> its encoded bytes (checked to
    decode, see _shard_image); any other image as it is. The models open paths only: a Parquet question file's
    photos were "image not found" to a model answered without the feature cache (coco-yesno, ONNX exports)."""
    from polymodal.data.shards import split_tar_ref

    return _shard_image(image) if split_tar_ref(image) is not None else image


def _ranks(sim: np.ndarray, positives: list[np.ndarray]) -> np.ndarray:
    """1-based rank of the best-ranked positive in each row of sim [Q, N]. A tie with a non-positive counts against
    the query, and a row with NaN or inf ranks last: a collapsed or diverged model scores R@1 = 0, not 1, so early
    stopping on validation recall never keeps it."""
    ranks = np.empty(len(sim), dtype=np.int64)
    for q, (row, pos) in enumerate(zip(sim, positives)):
        if not np.isfinite(row).all():
            ranks[q] = row.shape[0]
            continue
        ranks[q] = int((np.delete(row, pos) >= row[pos].max()).sum()) + 1
    return ranks


def _nearest(sim: np.ndarray, truth: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """The ``k`` columns of each row of ``sim`` that score highest, best first, ties in column order; the row's
    ``truth`` column after the columns it ties with (as _ranks counts a tie against it), non-finite scores last,
    and in a row holding any, the truth last of all (_ranks ranks it last: the page showed it as hit 1 beside
    "rank 1000")."""
    k = min(k, sim.shape[1])
    out = np.empty((len(sim), k), dtype=np.int64)
    for start in range(0, len(sim), chunk):  # a copy of a chunk at a time, not of the whole [C, I]
        part = np.array(sim[start:start + chunk], dtype=np.float64)
        finite = np.isfinite(part)
        part[~finite] = -np.inf
        rows, own = np.arange(len(part)), truth[start:start + chunk]
        part[rows, own] = np.where(finite.all(axis=1), part[rows, own], -np.inf)
        kth = -np.partition(-part, k - 1, axis=1)[:, k - 1]  # no full sort of each row: those at least the k-th
        for r, (row, least) in enumerate(zip(part, kth)):
            best = np.flatnonzero(row >= least)
            out[start + r] = best[np.lexsort((best == own[r], -row[best]))[:k]]  # a tie: the truth after the others
    return out


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray,
                      ranks: dict | None = None, top: int = 0) -> dict:
    """Text->image and image->text R@1/5/10 and median rank. Rows are L2-normalised embeddings; ``caption_image``
    [C] gives each text row's image row. ``ranks``, a dict, gets the 1-based ranks themselves: "t2i" [C] (each
    caption's image) and "i2t" [I] (each image's best-ranked caption), and with ``top`` "t2i_top" [C, top]: each
    caption's nearest image rows, best first (what a miss found instead)."""
    caption_image = np.asarray(caption_image)
    if caption_image.shape != (len(text_emb),) or (len(caption_image) and (
            caption_image.dtype.kind not in "iu" or caption_image.min() < 0 or caption_image.max() >= len(image_emb))):
        raise PolymodalError(f"caption_image must hold one image row index (0..{len(image_emb) - 1}) per text row "
                             f"({len(text_emb)}), got {caption_image.dtype} of shape {caption_image.shape}")
    sim, texts, images = Product(text_emb, image_emb), len(text_emb), len(image_emb)  # [C, I], a block at a time
    top = top if ranks is not None else 0

    def t2i_rows(a: int, b: int) -> np.ndarray:  # each caption's rank, then its top nearest: one product per block
        block = sim.rows(a, b)
        rank = _ranks(block, [np.array([i]) for i in caption_image[a:b]])
        return np.column_stack([rank, _nearest(block, caption_image[a:b], top)]) if top else rank[:, None]

    t2i_both = per_block(t2i_rows, texts, images)
    t2i, t2i_top = t2i_both[:, 0].copy(), t2i_both[:, 1:].copy()
    # each image's captions, ascending (a scan of every caption per image was O(images x captions))
    owner = caption_image.astype(np.int64)  # an empty list is float
    # split at every image's end, the last split dropped: no images are no owners (np.split of nothing is one piece)
    owners = np.split(np.argsort(owner, kind="stable"), np.cumsum(np.bincount(owner, minlength=images)))[:images]
    bare = [i for i, o in enumerate(owners) if not len(o)]
    if bare:
        raise PolymodalError(f"{len(bare)} of {len(image_emb)} images have no caption (first: image {bare[0]}); "
                             "image->text recall needs one per image: drop those images or caption them")
    i2t = per_block(lambda a, b: _ranks(sim.columns(a, b), owners[a:b]), images, texts)
    if ranks is not None:
        ranks.update(t2i=t2i, i2t=i2t)
        if top:
            ranks["t2i_top"] = t2i_top
    out = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = round(float((ranks <= k).mean()), 4)
        # the lower middle rank of an even count, as open_clip and VSE++ report it (floor of the median): 33, not 33.5
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)))
    return out


# why an image whose embedding holds NaN or inf is left out (its --out error item; callers count them apart)
NOT_FINITE = "the model embeds it as NaN or inf (no similarity to it can be ranked)"


def encode_readable(model, images: list, source: str = "", batch_size: int = 32, progress: bool = False,
                    reasons: dict | None = None, names: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``model.encode_image`` over ``images``, leaving out the ones that cannot be read (a truncated JPEG, a file
    that is no image) with one warning instead of ending the evaluation. -> (embeddings of the readable images,
    their indices into ``images``). None readable is an error. ``progress`` shows a bar (the CLI's evaluations).
    ``reasons``, a dict, gets {index: why it could not be read} for each image left out (--out's error items).
    An image the model embeds as NaN or inf is left out too (reason NOT_FINITE, one warning naming it: ``names``,
    how to name each image, else the image itself): a NaN is in every similarity to it, and one such photo scored
    every query of `eval images` and every text query of `eval retrieval` 0. None finite is an error."""
    from polymodal.models.inputs import as_images, each_or_error, readable_results
    from polymodal.progress import progress_bar

    images = as_images(images)
    with progress_bar(total=len(images), desc="embedding", unit="img", disable=not progress) as bar:
        def encode(chunk: list) -> np.ndarray:
            # an image inside a shard or a Parquet file ("<file>#<row>") as its bytes, read a batch at a time
            out = model.encode_image([inside_as_bytes(x) for x in chunk])
            bar.update(len(chunk))  # a batch retried photo by photo (one unreadable) counts once, when it succeeds
            return out

        results = each_or_error(encode, images, batch_size)
        bar.update(len(images) - bar.n)  # the unreadable ones were looked at too
    rows = readable_results(results, "image", source)
    bad = [i for i in rows if not np.isfinite(results[i]).all()]
    if bad:
        shown = (names if names is not None else images)[bad[0]]
        name = shown if isinstance(shown, (str, Path)) else f"image {bad[0] + 1}"  # (bytes, a PIL image: its place)
        if len(bad) == len(rows):
            where = f" of {source}" if source else ""
            raise PolymodalError(f"the model embeds all {len(rows):,} readable images{where} as NaN or inf (first: "
                                 f"{name}): its weights are broken (a training that diverged?); no figure can be "
                                 "computed")
        log.warning("%sleft out %s the model embeds as NaN or inf (first: %s): no similarity to %s can be ranked; "
                    "the figures are over the rest", f"{source}: " if source else "",
                    f"{len(bad):,} image{'s' * (len(bad) != 1)}", name, "it" if len(bad) == 1 else "them")
        for i in bad:
            results[i] = NOT_FINITE
        rows = [i for i in rows if not isinstance(results[i], str)]
    if reasons is not None:
        reasons.update((i, r) for i, r in enumerate(results) if isinstance(r, str))
    return np.stack([results[i] for i in rows]), np.asarray(rows, dtype=np.int64)


def not_finite(reasons: dict) -> int:
    """How many of encode_readable's ``reasons`` are NOT_FINITE: the JSON line counts them apart from unreadable."""
    return sum(why == NOT_FINITE for why in reasons.values())


def check_finite_texts(emb: np.ndarray, texts: list[str], what: str) -> None:
    """One error when the model embeds a text (a caption, a class's prompts: ``what``) as NaN or inf: the NaN is in
    every image's similarities to it, so every image->text query of `eval retrieval` ranked last (i2t R@K 0), and
    in `eval zeroshot` every photo."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(emb)).reshape(len(emb), -1).all(axis=1))
    if len(bad):
        raise PolymodalError(f"the model embeds {len(bad):,} {what}{'s' * (len(bad) != 1)} as NaN or inf (first: "
                             f"{texts[bad[0]]!r:.80}): every photo's ranking would hold a NaN and score 0; check the "
                             "model's text tower")


def encode_captions(model, captions: list[str], progress: bool = False, chunk: int = 512,
                    desc: str = "captions") -> np.ndarray:
    """``model.encode_text`` in chunks under a bar: 5,000 captions take about as long as 1,000 photos, and a silent
    half of an evaluation reads as a hang. The chunks are cut in order of length (token counts where the model
    counts them), as encode_text cuts its batches: cut in the captions' order, each chunk's batches spanned most
    lengths (Flickr8k dev: 1.14x the tokens, against 1.01x). A model whose text vectors depend on their batch keeps
    the captions' order."""
    from polymodal.models.interface import length_order
    from polymodal.progress import progress_bar

    order = np.arange(len(captions))
    if getattr(model, "texts_batch_independent", True) and len(captions) > chunk:
        lengths = model.text_lengths(captions) if hasattr(model, "text_lengths") else None
        order = length_order(captions, lengths)
    out = None
    with progress_bar(total=len(captions), desc=desc, unit="text", disable=not progress) as bar:
        for start in range(0, len(captions), chunk):
            rows = order[start:start + chunk]
            part = np.asarray(model.encode_text([captions[j] for j in rows]))
            if out is None:
                out = np.empty((len(captions), *part.shape[1:]), part.dtype)
            out[rows] = part
            bar.update(len(part))
    return out if out is not None else np.asarray(model.encode_text([]))


def pairs_of_images(pairs: Pairs, rows: np.ndarray, reasons: dict | None = None) -> Pairs:
    """The pairs of the images at ``rows`` (see `encode_readable`): other images and their captions are dropped.
    ``reasons`` ({image index: why it could not be read}, as encode_readable gives them): each such image is kept in
    ``left_out`` with its captions, for eval retrieval --out's error items."""
    new_index = np.full(len(pairs.images), -1, dtype=np.int64)
    new_index[rows] = np.arange(len(rows))
    keep = new_index[np.asarray(pairs.caption_image)] >= 0
    names = pairs.image_names()
    left_out = list(pairs.left_out)
    # the captions grouped in one pass: a pass per unreadable photo took minutes on a scraped set with dead links
    captions_of: dict[int, list[str]] = {int(i): [] for i in (reasons or {})}
    if captions_of:
        for c, j in zip(pairs.captions, np.asarray(pairs.caption_image).tolist()):
            if j in captions_of:
                captions_of[j].append(c)
    for i, why in sorted((reasons or {}).items()):
        left_out.append((names[i], captions_of[int(i)], why))
    return Pairs([pairs.images[i] for i in rows], [c for c, k in zip(pairs.captions, keep) if k],
                 new_index[np.asarray(pairs.caption_image)[keep]], [names[i] for i in rows], left_out=left_out)
