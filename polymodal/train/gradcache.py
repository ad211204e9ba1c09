"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive loss couples every pair in the batch, so it cannot be split into independent micro-batches. GradCache
splits the encoders instead: embed all chunks without a graph, take the loss gradient with respect to the
embeddings, then re-run each chunk with a graph and push that cached gradient through it. Parameter gradients are
the large-batch gradients; peak activation memory is one chunk's (plus the [N, D] embeddings and the loss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from polymodal.errors import PolymodalError


class _RngState:
    """CPU and current-CUDA-device generator states, so a chunk's re-run draws the same dropout masks."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        # Only the current device: get_rng_state_all would create a context on every visible GPU in every rank.
        self.device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device is not None else None

    @contextmanager
    def restored(self):
        # fork_rng puts the callers' generators back afterwards, so the replays leave no trace on them.
        with torch.random.fork_rng(devices=[] if self.device is None else [self.device]):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _length(batch: Any, name: str) -> int:
    if isinstance(batch, Mapping):
        lengths = {key: _length(value, f"{name}[{key!r}]") for key, value in batch.items()}
        if len(set(lengths.values())) != 1:
            raise PolymodalError(
                f"{name} entries have different batch sizes {lengths}; give every entry one row per example"
            )
        return next(iter(lengths.values()))
    if isinstance(batch, Tensor) and batch.ndim > 0 or isinstance(batch, Sequence) and not isinstance(batch, str):
        return len(batch)
    raise PolymodalError(
        f"{name} must be a tensor, a list or a dict of them to split into chunks, got {type(batch).__name__}"
    )


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, Mapping):
        return {key: _slice(value, start, stop) for key, value in batch.items()}
    return batch[start:stop]


def _chunks(batch: Any, chunk_size: int, name: str) -> list[Any]:
    n = _length(batch, name)
    if n == 0:
        raise PolymodalError(f"{name} is empty; pass at least one example")
    return [_slice(batch, start, start + chunk_size) for start in range(0, n, chunk_size)]


def _embed(encode: Callable[[Any], Tensor], chunks: list[Any], name: str) -> tuple[Tensor, list[_RngState]]:
    """Embed every chunk without a graph, remembering the RNG state each chunk started from."""
    states, embs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RngState())
            emb = encode(chunk)
            if not isinstance(emb, Tensor) or emb.ndim < 1:
                raise PolymodalError(f"{name} must return a tensor [b, D] per chunk, got {type(emb).__name__}")
            embs.append(emb)
    return torch.cat(embs).requires_grad_(), states


def _replay(encode: Callable[[Any], Tensor], chunks: list[Any], states: list[_RngState], grad: Tensor) -> None:
    """Re-run each chunk with a graph and push its slice of the cached embedding gradient into the parameters."""
    start = 0
    for chunk, state in zip(chunks, states):
        with state.restored():
            emb = encode(chunk)
        emb.backward(grad[start : start + len(emb)])
        start += len(emb)


def gradcache_backward(
    encode_image: Callable[[Any], Tensor],
    encode_text: Callable[[Any], Tensor],
    images: Any,
    texts: Any,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Accumulate into .grad the gradient of loss_fn over the whole batch, running the encoders chunk by chunk.

    images, texts: a tensor, a list, or a dict of those (e.g. tokenizer output), split along the first dimension
    into chunks of `chunk_size`. encode_image / encode_text map a chunk to embeddings [b, D]: projection heads over
    cached features or full towers alike. loss_fn(image_emb [N, D], text_emb [N, D]) -> scalar; parameters it
    holds (a learnable temperature) get their gradients from its one backward.

    Returns (loss, image_emb, text_emb), all detached. Call optimizer.step() afterwards as after loss.backward().

    The gradients equal those of one backward through the same chunked forward: dropout masks repeat because each
    chunk's re-run starts from the RNG state its first run did. Each encoder runs twice per chunk, so BatchNorm sees
    per-chunk statistics and updates its running stats twice: use LayerNorm towers (as CLIP does) or freeze BN.
    Under DistributedDataParallel every re-run backward would all-reduce; wrap the call in `model.no_sync()` and
    all-reduce (average) the gradients once afterwards.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise PolymodalError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    image_chunks = _chunks(images, chunk_size, "images")
    text_chunks = _chunks(texts, chunk_size, "texts")
    image_emb, image_states = _embed(encode_image, image_chunks, "encode_image")
    text_emb, text_states = _embed(encode_text, text_chunks, "encode_text")

    loss = loss_fn(image_emb, text_emb)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise PolymodalError("loss_fn must return a scalar tensor; for ClipLoss pass lambda i, t: loss(i, t).loss")
    loss.backward()  # caches d loss / d embedding in image_emb.grad, text_emb.grad

    # A loss that ignores one side leaves its grad None: that encoder gets no gradient, so skip its re-run.
    if image_emb.grad is not None:
        _replay(encode_image, image_chunks, image_states, image_emb.grad)
    if text_emb.grad is not None:
        _replay(encode_text, text_chunks, text_states, text_emb.grad)
    return loss.detach(), image_emb.detach(), text_emb.detach()
