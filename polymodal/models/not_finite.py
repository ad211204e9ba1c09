"""VQA answers a model scores as NaN or inf: its weights are broken (a training that diverged, a damaged file) or an
input overflows it. Every argmax over NaN logits picks the vocabulary's first answer, often the commonest: such an
answer scored a broken model at the majority rate in `eval vqa`, and its NaN score was written into JSON (which then
was no strict JSON). So no such answer is counted, printed or sent."""

from __future__ import annotations

import math

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
