"""Inference in eval mode without leaving it there: checking a model halfway through training (answer, predict,
encode) must not switch its dropout off for the rest of the training."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

_MODE = threading.Lock()  # guards each model's count of inference calls in progress
_USERS, _RESTORE = "_polymodal_eval_users", "_polymodal_restore_train"


@contextmanager
def evaluating(model: Any) -> Iterator[Any]:
    """``model.eval()`` inside, the caller's train/eval mode back after (models that are no nn.Module pass through).
    Calls in progress are counted per model, so that with two threads the first to finish does not switch dropout
    back on under the other: the last one out restores the mode."""
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    state = model.__dict__  # plain attributes: nn.Module's __setattr__ would look for parameters and buffers
    with _MODE:
        if not state.get(_USERS):
            state[_RESTORE] = model.training
            model.eval()
        state[_USERS] = state.get(_USERS, 0) + 1
    try:
        yield model
    finally:
        with _MODE:
            state[_USERS] -= 1
            if not state[_USERS] and state.pop(_RESTORE, False):
                model.train()


def in_eval_mode(method: Callable) -> Callable:
    """Decorator form of :func:`evaluating` for a model's inference methods."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with evaluating(self):
            return method(self, *args, **kwargs)

    return wrapper


def check_float32(model: Any, what: str) -> None:
    """.half() / .to(torch.bfloat16) / .double() on a model would fail deep in a tower ("Input type (float) and bias
    type (c10::Half) should be the same"): one error saying what works instead. Models that are no nn.Module pass."""
    if not isinstance(model, torch.nn.Module):
        return
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype != torch.float32:
        from polymodal.errors import PolymodalError

        raise PolymodalError(f"this {what}'s weights are {dtype}, but it computes in float32: call .float() on it; "
                             "for bf16 image inference load it with polymodal.load(NAME, precision='bf16')")
