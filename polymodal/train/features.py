"""Frozen-tower features computed once and cached on disk, so epochs over frozen towers cost no tower passes.

The image cache stores `model.image_cache_input(pixels)`: the pooled/spatial features when the image tower is
frozen, or the trunk activations before the first trainable block under partial unfreezing. View 0 is the plain
centre crop; views 1.. are fixed augmented views (augmentation per cached view).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from polymodal.cache import CacheFill, cache_key, mark_used, row_key, rows_elsewhere, rows_file
from polymodal.cache import store_row_keys
from polymodal.cache import load_cached as _load_cached
from polymodal.data.augment import Augment, make_rng, photo_decode_size, view_transform
from polymodal.data.images import LOADER_VERSION
from polymodal.data.pairs import PairSet, open_pair_image
from polymodal.data.shards import _file_identity, split_tar_ref
from polymodal.errors import PolymodalError
from polymodal.models.inputs import Unreadable, plural, stopping_at_first_unreadable
from polymodal.models.interface import batch_order
from polymodal.progress import batch_progress, progress_bar
from polymodal.train import distributed

log = logging.getLogger(__name__)


def _identity(image) -> str:
    """Path + size + mtime + ctime (content changes invalidate the cache; ctime also when the photo was replaced
    and its mtime put back, as cp -p, rsync -a, tar -x and touch -r do); a shard member by name + its shard's
    inode, size and mtime (write_shards names the samples of any data alike: shard-000000.tar#000000000.jpg, ...);
    an image in memory by a digest of its content."""
    if not isinstance(image, (str, os.PathLike)):
        return _content_identity(image)
    split = split_tar_ref(image)
    if split is not None:
        return f"{image}|{_file_identity(split[0])}"
    try:
        st = os.stat(image)
        return f"{image}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    except (OSError, ValueError):
        return str(image)


def _content_identity(image) -> str:
    """An array, tensor, PIL image or encoded bytes by type, shape and a digest of its bytes. str() named them
    before: a large array prints only its corners, so two photos with white borders shared one cache entry (the
    second got the first's features), and a PIL image prints its memory address."""
    from PIL import Image

    kind = type(image).__name__
    if isinstance(image, (bytes, bytearray, memoryview)):
        data, form = bytes(image), "encoded"
    elif isinstance(image, Image.Image):
        data, form = image.tobytes(), f"{image.mode} {image.size}"
    else:
        if isinstance(image, torch.Tensor):
            form = f"{image.dtype} {tuple(image.shape)}"
            image = image.detach().cpu().float().numpy()  # numpy has no bfloat16
        else:
            image = np.asarray(image)
            form = f"{image.dtype} {image.shape}"
        data = np.ascontiguousarray(image).tobytes()
    return f"{kind}|{form}|{hashlib.sha256(data).hexdigest()}"


def _open_or_none(image, skip_unreadable: bool, min_size: int | None):
    """The image, or None for an unreadable one when skipping those (a corrupt file should not end a run)."""
    try:
        return open_pair_image(image, min_size)
    except PolymodalError as exc:
        if not skip_unreadable:
            raise
        if stopping_at_first_unreadable():  # eval --strict: the rest of the pass would be refused anyway
            raise Unreadable(str(exc)) from None
        log.info("left out: %s", exc)
        return None


@torch.inference_mode()
def image_features(
    model, images: Sequence, views: int = 1, augment: Augment | None = None, seed: int = 0,
    batch_size: int = 32, progress: bool = True, skip_unreadable: bool = False, split_across_ranks: bool = False,
    desc: str = "caching image features",
) -> np.ndarray:
    """[views, N, *feature_shape] float16, memory-mapped from the cache (computed on first use). An unreadable
    image is an error, or with ``skip_unreadable`` gets NaN features (see `readable_rows`). Both kinds of caller
    share one cache entry: one that skips nothing fails on a NaN row as it would have on the image.
    ``split_across_ranks`` (every torchrun process calls this together): each computes a share of the batches and
    all get the whole array, instead of each computing all of it. ``desc``: the progress bar's label."""
    if not len(images):  # (the error below names the first image)
        raise PolymodalError("no images to encode; pass at least one")
    augment = augment or Augment()
    # one view is the photo as the model sees it, whatever the augmentation and seed: a run with another --seed
    # reuses it (the key held both, so it encoded every photo again)
    drawn = (views, repr(augment), seed) if views > 1 else (1,)
    shared = (model.image_cache_signature, *_precision(model), f"loader {LOADER_VERSION}", *drawn)
    identities = [_identity(image) for image in images]
    path, cached = _load_cached(cache_key(*shared, *identities), "image")
    if cached is not None and _reads_now(model, images, _nan_rows(cached[0]), skip_unreadable):
        cached = None
    split = split_across_ranks and distributed.world_size() > 1
    if distributed.all_true(cached is not None) if split else cached is not None:  # all ranks compute, or none
        mark_used(rows_file(path))
        return cached
    # one view: a row per photo, which other lists' entries may hold (augmented views are drawn per position)
    keys = [row_key(*shared, identity) for identity in identities] if views == 1 else None
    if keys and not split:
        reused = _reuse_rows(model, images, keys, path, batch_size, progress, skip_unreadable, desc)
        if reused is not None:
            return reused
    starts = distributed.share_of_batches(len(images), batch_size, split)
    mine = sum(min(batch_size, len(images) - i) for i in starts)
    bar = progress_bar(total=views * mine, desc=desc, unit="img", disable=not progress)
    with bar:  # closed on an error too: no bar line after the error's
        out = _encode_views(model, images, views, augment, seed, starts, batch_size, skip_unreadable, bar, path)
    if split:  # a rank none of whose images could be read (others' could) marks its rows unread
        out = _sum_shares(out, lambda shape: _share_unread(path, shape, starts, batch_size))
    if out is None:  # (torchrun: on every rank alike, and rank 0 says so)
        error = distributed.error_of_every_rank if split else PolymodalError
        raise error(f"none of the {plural(len(images), 'image')} could be read (first: {images[0]}); check the "
                    "image files (polymodal -v ... names each one)")
    return _with_row_keys(out.finish(), path, keys)


def _sum_shares(out: CacheFill | None, empty) -> CacheFill | None:
    """torchrun: each rank's ``out`` holds its batches' rows, zeros elsewhere (a sparse file), so their sum is every
    row; a rank without any gets ``empty(shape)`` first. None where no rank had one."""
    try:
        shape = distributed.any_shape(None if out is None else out.shape)
        if out is None and shape is not None:
            out = empty(shape)
        if out is not None:
            distributed.sum_in_place(out)
        return out
    except BaseException:  # another process stopped: no temporary file left behind
        if out is not None:
            out.discard()
        raise


def _with_row_keys(feats: np.ndarray, path, keys) -> np.ndarray:
    """``feats``, whose file at ``path`` (where it could be written) now says which photo each row is."""
    if keys and isinstance(feats, np.memmap):
        store_row_keys(path, keys)
    return feats


def _reuse_rows(model, images: Sequence, keys: list, path, batch_size: int, progress: bool,
                skip_unreadable: bool, desc: str = "caching image features") -> np.ndarray | None:
    """[1, N, ...] features of ``images`` written to ``path``, with the rows that other entries hold copied from
    them and only the other photos encoded: another --seed splits the same photos into other lists, and one photo
    dropped or added made another list, each of which encoded every photo again. None where no entry holds one.
    (The tower gives a photo the same features in any batch at one thread; at two, alone vs in a batch of 32, up to
    1.3e-5 apart: 7x7 grids, repro batch_invariance.py.)"""
    fill, found = None, set()
    try:
        for array, rows in rows_elsewhere(path, keys):  # each entry copied from, then closed
            for i, row in rows.items():
                if np.isnan(array[0, row].reshape(-1)[0]):  # unreadable then: tried again
                    continue
                if fill is None:
                    fill = CacheFill(path, (1, len(images), *array.shape[2:]), np.float16)
                fill.write(i, array[0, row : row + 1])
                found.add(i)
    except BaseException:
        if fill is not None:
            fill.discard()
        raise
    if fill is None:
        return None
    missing = [i for i in range(len(images)) if i not in found]
    log.info("image features: %d of %d photos from earlier runs' cache, %d to encode", len(found), len(images),
             len(missing))
    size = photo_decode_size(model, None)
    try:
        with progress_bar(total=len(missing), desc=desc, unit="img",
                          disable=not progress or not missing) as bar:
            for start in range(0, len(missing), batch_size):
                rows = missing[start : start + batch_size]
                pils = [_open_or_none(images[i], skip_unreadable, size) for i in rows]
                block = np.full((len(rows), *fill.shape[2:]), np.nan, np.float16)
                read, feats = _encode(model, model.transform, pils)
                if read:
                    block[read] = feats
                for i, feat in zip(rows, block):
                    fill.write(i, feat[None])
                bar.update(len(rows))
    except BaseException:
        fill.discard()
        raise
    return _with_row_keys(fill.finish(), path, keys)


def _encode(model, transform, pils: list) -> tuple[list[int], np.ndarray | None]:
    """(positions of the images read, their tower features) of a batch of opened images (None: unreadable)."""
    read = [j for j, p in enumerate(pils) if p is not None]
    if not read:
        return read, None
    return read, model.image_cache_input(torch.from_numpy(transform([pils[j] for j in read]))).float().numpy()


def _precision(model) -> tuple[str, ...]:
    """The image tower's precision where it is not fp32: a model loaded with precision="bf16" computes other
    features (a frozen bf16 graph) than the fp32 model whose cache key it would otherwise share."""
    precision = getattr(getattr(model, "image_tower", None), "precision", "fp32")
    return () if precision == "fp32" else (f"precision {precision}",)


def _reads_now(model, images: Sequence, unread: np.ndarray, skip_unreadable: bool) -> bool:
    """Whether an image the cache holds as unreadable (a NaN row) reads now: a transient error (a network file
    system, too many open files) is not kept for good. Without ``skip_unreadable`` the first one that still fails
    raises its own error; with it each is logged again (-v says why on a cached run too)."""
    size = photo_decode_size(model, None)
    return any(_open_or_none(images[i], skip_unreadable, size) is not None for i in unread)  # (stops at one)


def _encode_views(model, images: Sequence, views: int, augment: Augment, seed: int, starts: range, batch_size: int,
                  skip_unreadable: bool, bar, path) -> CacheFill | None:
    """[views, N, *feature_shape] float16 features of the batches starting at ``starts``, NaN rows for unreadable
    images among them, zeros in the rows of other batches (other ranks'); None when none could be read. Written to
    the cache file at ``path`` batch by batch (a CacheFill), never held whole in memory."""
    out, unread = None, []  # unread: (row, count) of the batches before the first image that could be read
    try:
        for v in range(views):
            size = photo_decode_size(model, augment if v > 0 else None)  # view 0 is the photo as the model sees it
            transform = view_transform(model.transform) if v > 0 else model.transform
            for i in starts:
                pils = [_open_or_none(x, skip_unreadable, size) for x in images[i : i + batch_size]]
                if v > 0:  # view v of image j depends only on (seed, j, v)
                    pils = [p and augment(p, make_rng(seed, i + j, v)) for j, p in enumerate(pils)]
                rows, feats = _encode(model, transform, pils)
                if rows:
                    if out is None:
                        shape = (views, len(images), *feats.shape[1:])
                        out = CacheFill(path, shape, np.float16)
                        for row, count in unread:
                            out.write(row, np.full((count, *shape[2:]), np.nan, np.float16))
                if out is None:
                    unread.append((v * len(images) + i, len(pils)))
                else:
                    block = np.full((len(pils), *out.shape[2:]), np.nan, np.float16)
                    if feats is not None:
                        block[rows] = feats
                    out.write(v * len(images) + i, block)
                bar.update(len(pils))
    except BaseException:
        if out is not None:
            out.discard()
        raise
    return out


def _share_unread(path, shape: tuple, starts: range, batch_size: int) -> CacheFill:
    """[views, N, ...] float16 at ``path``: NaN (unread) in the rows of the batches at ``starts`` (this process's
    share, none of which it could read), zeros in the others' rows (other ranks' share, summed in)."""
    out = CacheFill(path, shape, np.float16)
    for v in range(shape[0]):
        for i in starts:
            block = np.full((min(batch_size, shape[1] - i), *shape[2:]), np.nan, np.float16)
            out.write(v * shape[1] + i, block)
    return out


def readable_rows(image_feats: np.ndarray) -> np.ndarray:
    """Indices of the images `image_features(..., skip_unreadable=True)` could read (the others are NaN)."""
    return readable_images(image_feats[0])


def _nan_rows(feats: np.ndarray) -> np.ndarray:
    """Rows of one view ``[N, ...]`` that are NaN: images that could not be read when the cache was made."""
    return np.flatnonzero(np.isnan(feats.reshape(feats.shape[0], -1)[:, 0]))  # one value per image, from the map


def readable_images(feats: np.ndarray) -> np.ndarray:
    """`readable_rows` of one view ``[N, ...]`` (as `polymodal.train.vqa.grid_features` returns it)."""
    rows = np.setdiff1d(np.arange(feats.shape[0]), _nan_rows(feats))
    # under torchrun an image that failed to read on one rank only would give the ranks different datasets
    distributed.same_on_all_ranks(len(rows), "how many images could be read",
                                  "an image read on one process failed on another; check the image files (-v names "
                                  "each one) and run again")
    return rows


def report_unreadable(source, images: Sequence, rows: np.ndarray) -> None:
    """One warning when some of ``images`` are not in ``rows`` (`readable_rows`): how many, and the first."""
    if len(rows) < len(images):
        bad = np.setdiff1d(np.arange(len(images)), rows)
        log.warning("%s: left out %s (first: %s); -v says why", source, plural(len(bad), "unreadable image"),
                    images[bad[0]])


def readable_pairs(pairset: PairSet, rows: np.ndarray) -> PairSet:
    """The pairs of the images whose features are in ``rows`` (`readable_rows`); the others are reported."""
    if len(rows) == len(pairset.images):
        return pairset
    report_unreadable(pairset.source, pairset.images, rows)
    return pairset.subset(rows)


class RowSubset:
    """Rows ``rows`` of a (memory-mapped) feature array, read on demand: the readable images' features without
    copying the array. Indexing and ``shape`` follow the subset (row i is ``array[rows[i]]``)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array, self.rows = array, np.asarray(rows)

    @property
    def shape(self) -> tuple:
        return (len(self.rows), *self.array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.array[self.rows[index]]


def readable_subset(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray | RowSubset]:
    """(rows that could be read, their features) of one view ``[N, ...]`` with NaN rows for unreadable images."""
    rows = readable_images(feats)
    return rows, feats if len(rows) == len(feats) else RowSubset(feats, rows)


@torch.inference_mode()
def text_features(model, captions: Sequence[str], batch_size: int = 128, progress: bool = True,
                  split_across_ranks: bool = False, desc: str = "caching text features") -> np.ndarray:
    """[C, 384] float32 pooled sentence features of the frozen text tower (cached). ``split_across_ranks``: as
    `image_features`'. ``desc``: the progress bar's label (what the texts are)."""
    if not len(captions):  # an empty array has no shape to cache: it was stored as a file every later call failed on
        raise PolymodalError("no captions to encode; pass at least one")
    path, cached = _load_cached(cache_key(model.text_cache_signature, *captions), "text")
    split = split_across_ranks and distributed.world_size() > 1
    if distributed.all_true(cached is not None) if split else cached is not None:
        return cached
    starts = distributed.share_of_batches(len(captions), batch_size, split)
    # one process: written to the file batch by batch, as image features are (a run's one list of captions and
    # hard negatives was held whole in memory: 2.3x the peak of its largest list before, repro text_peak.py)
    bar = batch_progress(starts, len(captions), batch_size, desc=desc, unit="text",
                         disable=not progress)
    out = _encode_texts(model, captions, bar, batch_size, path=path)
    if split:  # a rank with no batch (fewer batches than ranks) learns the shape from the others
        out = _sum_shares(out, lambda shape: CacheFill(path, shape, np.float32))
    return out.finish()


class TextRows:
    """A run's texts encoded once (`text_features`) as one list, the distinct texts sorted, before the split by
    --seed; `of` gives the rows of some of them. A list per split (train, validation) was a new cache entry for
    every --seed, every caption encoded again; this list is the same whatever the seed or the rows' order. (Copying
    rows across lists would not be exact: a text's features shift with its batch's padding, up to 8e-7 on Flickr8k.)"""

    def __init__(self, texts: Iterable[str]) -> None:
        self.given, self.row, self.feats = texts, None, None

    def of(self, model, texts: Sequence[str], progress: bool = True, split_across_ranks: bool = False,
           desc: str = "caching text features") -> RowSubset | np.ndarray:
        """[len(texts), 384] features of ``texts``: memory-mapped rows of the run's list (encoded when first asked
        for, after the photos as the per-split lists were) where it holds them all; else ``texts`` as their own list
        (word swaps drawn by the seed, --val-pairs' captions: a list no seed changes already), its bar labelled
        ``desc`` (the run's list: "caching caption features"; two bars of one label read as one list twice)."""
        if self.row is None:  # sorted when first needed: a run that trains its text tower never is
            self.row = {t: i for i, t in enumerate(sorted(set(self.given)))}
        if not all(t in self.row for t in texts):
            return text_features(model, texts, progress=progress, split_across_ranks=split_across_ranks, desc=desc)
        if self.feats is None:
            self.feats = text_features(model, list(self.row), progress=progress, split_across_ranks=split_across_ranks,
                                       desc="caching caption features")
        return RowSubset(self.feats, np.array([self.row[t] for t in texts], dtype=np.int64))


def _encode_texts(model, captions: Sequence[str], starts, batch_size: int, by_length: bool = True,
                  path=None) -> np.ndarray | CacheFill | None:
    """[C, D] float32 text-tower features of the batches at ``starts`` (zeros elsewhere; None without a batch).
    ``by_length``: the batches are cut from the captions in order of length, as encode_text cuts them: a batch is
    padded to its longest text, and in the captions' own order 128-caption batches of Flickr8k ran ~1.8x their
    tokens (the same features to ~1e-6; benchmarks/train_caching.py). With ``path`` (``starts``: every batch):
    written to that cache file batch by batch (a CacheFill), never held whole in memory."""
    order = batch_order(model, captions, by_length)  # by token counts where the tower has them, else characters
    out = None
    try:
        for i in starts:
            rows = order[i : i + batch_size]
            feats = model.text_tower([captions[j] for j in rows]).float().numpy()
            if out is None:
                shape = (len(captions), *feats.shape[1:])
                out = CacheFill(path, shape, np.float32) if path else np.zeros(shape, np.float32)
            if isinstance(out, CacheFill):
                for row, feat in zip(rows, feats):  # a batch's rows are apart (cut in order of length)
                    out.write(int(row), feat[None])
            else:
                out[rows] = feats
    except BaseException:
        if isinstance(out, CacheFill):
            out.discard()
        raise
    return out


class CachedPairDataset(Dataset):
    """Item i = (cached image features of image i, one of its captions' features or text), drawn per epoch.

    One caption per image per epoch: a batch never holds the same image twice (no false negatives).
    With `negatives` = (negative features or texts [M], negatives_of: per caption an index array into them), items
    are (image, caption, one of that caption's hard negatives or None) and collate adds the batch's negatives."""

    def __init__(self, image_feats: np.ndarray, texts, caption_image: np.ndarray, seed: int = 0, rows=None,
                 negatives: tuple | None = None) -> None:
        """rows: the rows of image_feats that item 0, 1, ... serve (default all), e.g. those `readable_rows`
        gives; caption_image then indexes into rows."""
        self.image_feats, self.texts, self.seed, self.epoch = image_feats, texts, seed, 0
        self.rows = np.arange(image_feats.shape[1]) if rows is None else np.asarray(rows)
        self.captions_of = [np.flatnonzero(caption_image == i) for i in range(len(self.rows))]
        self.negatives = negatives

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        rng = make_rng(self.seed, self.epoch, i)
        view = int(rng.integers(self.image_feats.shape[0]))
        caption = int(rng.choice(self.captions_of[i]))
        image = torch.from_numpy(np.array(self.image_feats[view, self.rows[i]], dtype=np.float32))
        if self.negatives is None:
            return image, _text_item(self.texts[caption])
        features, negatives_of = self.negatives
        choices = negatives_of[caption]
        negative = _text_item(features[int(rng.choice(choices))]) if len(choices) else None
        return image, _text_item(self.texts[caption]), negative


def _text_item(text):
    # np.array copies out of the read-only memory map (torch wants writable memory)
    return text if isinstance(text, str) else torch.from_numpy(np.array(text, dtype=np.float32))


def _stack_texts(texts: list):
    return texts if not texts or isinstance(texts[0], str) else torch.stack(texts)


def collate_cached(batch):
    """-> (images [B, ...], texts: [B, 384] features or B strings[, negatives: [M, 384] or M strings, M <= B])."""
    images = torch.stack([b[0] for b in batch])
    texts = _stack_texts([b[1] for b in batch])
    if len(batch[0]) == 2:
        return images, texts
    return images, texts, _stack_texts([b[2] for b in batch if b[2] is not None])
