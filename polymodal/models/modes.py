"""Inference in eval mode without leaving it there: checking a model halfway through training (answer, predict,
encode) must not switch its dropout off for the rest of the training."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch


@contextmanager
def evaluating(model: Any) -> Iterator[Any]:
    """``model.eval()`` inside, the caller's train/eval mode back after (models that are no nn.Module pass through)."""
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def in_eval_mode(method: Callable) -> Callable:
    """Decorator form of :func:`evaluating` for a model's inference methods."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with evaluating(self):
            return method(self, *args, **kwargs)

    return wrapper
