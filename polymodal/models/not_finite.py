"""VQA answers a model scores as NaN or inf: its weights are broken (a training that diverged, a damaged file) or an
input overflows it. Every argmax over NaN logits picks the vocabulary's first answer, often the commonest: such an
answer scored a broken model at the majority rate in `eval vqa`, and its NaN score was written into JSON (which then
was no strict JSON). So no such answer is counted, printed or sent."""

from __future__ import annotations

import functools
import math
from typing import Callable

from polymodal.errors import PolymodalError

# why a question is left out of `eval vqa` and `vqa --qa` (its --out error item; counted as "not_finite")
NOT_FINITE = "the model scores its answers as NaN or inf (no answer can be chosen)"
BROKEN = "its weights are broken (a training that diverged? a damaged file?)"


class NotFiniteAnswer(PolymodalError):
    """The model's own output is NaN or inf, not the request's fault: the server answers 500, not 400."""


def finite_answer(result: dict) -> dict:
    """answer()'s ``{"answer", "score", "alternatives"}``, or one error when a score in it is NaN or inf."""
    if all(math.isfinite(score) for _, score in result["alternatives"]):
        return result
    raise NotFiniteAnswer(f"the model scores the answers to this question as NaN or inf, so none can be chosen: "
                          f"{BROKEN}")


def finite_ranking(ranked: list[tuple[str, float]], inputs_finite: bool) -> list[tuple[str, float]]:
    """Choices ranked (best first), or each scored NaN when a score, or a logit behind them (``inputs_finite``
    False), is NaN or inf: a softmax over the choices' logits alone can be finite when the rest are NaN, and a sort
    over NaN scores puts any choice first, so a broken model's pick passed as an answer."""
    if inputs_finite and all(math.isfinite(score) for _, score in ranked):
        return ranked
    return [(answer, math.nan) for answer, _ in ranked]


def is_finite_answer(result) -> bool:
    """A row's (answer, score), as predict() and predict_choices() give it, has a finite score."""
    return math.isfinite(result[1])


def all_not_finite(count: int, model: str = "the model", first: str = "") -> NotFiniteAnswer:
    """The error for a model that scores the answers to every one of ``count`` questions as NaN or inf."""
    every = "its one question" if count == 1 else f"all {count:,} questions"
    where = f" (first: {first})" if first else ""
    return NotFiniteAnswer(f"{model} scores the answers to {every} as NaN or inf{where}, so none can be chosen: "
                           f"{BROKEN}")


def finite_rows(predict: Callable) -> Callable:
    """For a VQA model's predict() and predict_choices(): one error when every row is scored NaN or inf. Each row's
    answer was then the vocabulary's first (the argmax of NaN), and only its NaN score said that it was none. A row
    scored so among finite rows (a photo that overflows the model) keeps its NaN score: `eval vqa` leaves it out."""

    @functools.wraps(predict)
    def checked(self, *args, **kwargs):
        rows = predict(self, *args, **kwargs)
        if rows and not any(map(is_finite_answer, rows)):
            raise all_not_finite(len(rows), f"model {getattr(self, 'name', type(self).__name__)!r}")
        return rows

    return checked
