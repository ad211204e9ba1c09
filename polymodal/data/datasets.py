"""The torch datasets for training on image-caption pairs (the readers they draw on stay torch-free).

- `ImageCaptionDataset` serves one (pixels, caption, image index) per unique image of a PairSet: in a batch no two
  rows show the same image, so the contrastive loss sees no duplicate-image false negatives; `collate_pairs`
  batches its items.
- `ShardDataset` streams tar shards (`polymodal.data.shards`): it splits shards across DataLoader workers and
  distributed ranks, shuffles through a buffer of undecoded samples and decodes lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from polymodal.data.augment import Augment, make_rng, photo_decode_size, view_transform
from polymodal.data.images import ImageTransform, load_image
from polymodal.data.pairs import PairSet, open_pair_image
from polymodal.data.shards import ShardSample, StreamSkips, expand_shards, iter_samples, note_skipped
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


class ImageCaptionDataset(Dataset):
    """Map-style dataset over the unique images of a PairSet: item i = (pixels float32 [3, H, W], caption, i).

    Each epoch gives every image one caption. An image with k captions walks through a seeded random
    permutation of them, one per epoch, a new permutation every k epochs: all captions are used, in random
    order, and the choice depends only on (seed, epoch, i), not on DataLoader workers or batch order.
    Call `set_epoch(e)` before each epoch (it reaches persistent workers too: the epoch is in shared memory).
    `augment` (if given) runs on the PIL image before `transform`, seeded by (seed, epoch, i).
    """

    def __init__(self, pairset: PairSet, transform: ImageTransform, augment: Augment | None = None, seed: int = 0):
        if not pairset.images:
            raise PolymodalError("ImageCaptionDataset got an empty PairSet; read a source with read_pair_source")
        self.images = list(pairset.images)
        self.captions: list[list[str]] = [[] for _ in self.images]
        for pair, owner in zip(pairset.pairs, pairset.caption_image):
            self.captions[owner].append(pair.caption)
        self.transform = transform if augment is None else view_transform(transform)  # (resize 0: views resized)
        self.augment, self.seed = augment, int(seed)
        self.decode_size = photo_decode_size(transform, augment)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.images)

    def caption_for(self, index: int, epoch: int | None = None) -> str:
        """The caption image `index` gets in `epoch` (default: the current epoch)."""
        captions = self.captions[index]
        if len(captions) == 1:
            return captions[0]
        cycle, position = divmod(self.epoch if epoch is None else int(epoch), len(captions))
        return captions[int(make_rng(self.seed, index, cycle, 0).permutation(len(captions))[position])]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        index = int(index)
        if not 0 <= index < len(self.images):
            raise IndexError(f"index {index} out of range for {len(self.images)} images")
        image = open_pair_image(self.images[index], self.decode_size)
        if self.augment is not None:
            image = self.augment(image, make_rng(self.seed, self.epoch, index, 1))
        pixels = torch.from_numpy(self.transform([image])[0])
        return pixels, self.caption_for(index), index


def collate_pairs(batch: Sequence[tuple]) -> tuple[torch.Tensor, list[str], Any]:
    """[(pixels, caption, id)] -> (pixels [B, 3, H, W], captions, ids: int64 tensor, or a list for string keys)."""
    if not batch:
        raise PolymodalError("collate_pairs got an empty batch")
    pixels = torch.stack([b[0] for b in batch])
    captions = [b[1] for b in batch]
    ids = [b[2] for b in batch]
    if all(isinstance(i, (int, np.integer)) for i in ids):
        ids = torch.as_tensor(ids, dtype=torch.int64)
    return pixels, captions, ids


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise PolymodalError(f"rank={rank}, world_size={world_size}: pass both, with 0 <= rank < world_size")
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Stream of (pixels float32 [3, H, W], caption, key) from tar shards, for training.

    Shard i (after an optional per-epoch shuffle that every rank does identically) goes to consumer i % n, where
    the n = world_size * num_workers consumers are DataLoader workers on distributed ranks. With fewer shards
    than consumers, every consumer reads all shards and keeps sample j where j % n is its own number, so the
    split is still disjoint and complete. Samples pass undecoded through a shuffle buffer; each is decoded,
    augmented and transformed only when it leaves. One caption per image per epoch, chosen at random.
    Call `set_epoch(e)` before each epoch (it reaches persistent workers too: the epoch is in shared memory).
    `skipped` lists (location, reason) for samples dropped in this process (with num_workers=0, all of them).
    """

    def __init__(
        self,
        patterns: Any,
        transform: ImageTransform,
        augment: Augment | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        *,
        shuffle_shards: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.shards = expand_shards(patterns)
        self.transform = transform if augment is None else view_transform(transform)  # (resize 0: views resized)
        self.augment = augment
        self.decode_size = photo_decode_size(transform, augment)
        self.shuffle_buffer, self.seed, self.shuffle_shards = int(shuffle_buffer), int(seed), shuffle_shards
        _rank_world(rank, world_size)  # validate now, resolve when iterating (torch.distributed may start later)
        self.rank, self.world_size = rank, world_size
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.skipped: list[tuple[str, str]] = []

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def consumer(self) -> tuple[int, int]:
        """(this consumer's number, number of consumers) from the rank and the DataLoader worker."""
        rank, world = _rank_world(self.rank, self.world_size)
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def _own_shards(self, me: int, n: int, epoch: int) -> tuple[list[Path], bool]:
        order = list(self.shards)
        if self.shuffle_shards:
            order = [order[i] for i in make_rng(self.seed, epoch).permutation(len(order))]
        if len(order) >= n:
            return order[me::n], False
        if me == 0:
            log.warning("%d shards for %d consumers (ranks x workers): splitting by sample, each reads every shard; "
                        "write at least %d shards to avoid the extra reading", len(order), n, n)
        return order, True

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, str]]:
        me, n = self.consumer()
        epoch = self.epoch
        shards, by_sample = self._own_shards(me, n, epoch)
        rng = make_rng(self.seed, epoch, me + 1)
        skipped = StreamSkips()  # this pass's: one warning, then a count when the pass ends
        stream: Iterable[ShardSample] = iter_samples(shards, read_images=True, skipped=skipped)
        if by_sample:
            stream = (s for j, s in enumerate(stream) if j % n == me)
        try:
            for sample in _shuffled(stream, self.shuffle_buffer, rng):
                try:
                    image = load_image(sample.image, self.decode_size)
                    if self.augment is not None:
                        image = self.augment(image, rng)
                    pixels = torch.from_numpy(self.transform([image])[0])
                except PolymodalError as exc:
                    note_skipped(skipped, f"{sample.shard}:{sample.image_name}", str(exc))
                    continue
                caption = sample.captions[int(rng.integers(len(sample.captions)))]
                yield pixels, caption, sample.key
        finally:
            self.skipped.extend(skipped)
            skipped.summarise(f"shards of epoch {epoch}" + (f" (consumer {me} of {n})" if n > 1 else ""))


def _shuffled(stream: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream through a buffer of `size` items (size <= 1: pass through in order)."""
    if size <= 1:
        yield from stream
        return
    buffer: list = []
    for item in stream:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        buffer[j], item = item, buffer[j]
        yield item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]
