"""What VQA accuracy is to be read against: the majority answer's accuracy (the most common right answer given to
every question of the same rows), and a warning when the model gives nearly one answer to everything. A yes/no model
answering "no" to 77 of 81 held-out questions scored 0.6543, exactly what answering "no" to all of them scores, and
nothing said so (stop 56)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

from polymodal.data.answers import comparable_answer

log = logging.getLogger(__name__)

ONE_ANSWER_SHARE = 0.9  # warned of when one answer is at least this share of the predictions...
ONE_ANSWER_FEWEST = 20  # ...of this many questions or more (below, `warn_of_few` already says the set is too small)


def majority_baseline(predicted: Sequence[str], rows: Sequence) -> dict:
    """{"majority_answer", "majority_answer_accuracy", "top_prediction", "top_prediction_share"} over the scored
    ``rows`` (QARow) and their ``predicted`` answers; answers are counted as they are compared (comparable_answer:
    'Yes.' is 'yes'), the majority's accuracy scored as the model's is (row_score: soft accuracy where a row has
    annotators' answers). A one-answer warning when ``predicted`` is nearly all one answer."""
    from polymodal.eval.vqa import row_score

    majority = _most_common([r.answer for r in rows])
    top = _most_common(predicted)
    share = sum(comparable_answer(a) == top for a in predicted) / max(1, len(predicted))
    baseline = sum(row_score(majority, r) for r in rows) / max(1, len(rows))
    if len(predicted) >= ONE_ANSWER_FEWEST and share >= ONE_ANSWER_SHARE:
        log.warning("the model answered %r to %d of %d questions (%.0f%%, warned of from %.0f%%): its accuracy is "
                    "mostly that answer's share; answering %r to every question scores %.4f (majority_answer_accuracy)",
                    top, round(share * len(predicted)), len(predicted), 100 * share, 100 * ONE_ANSWER_SHARE, majority,
                    baseline)
    return {"majority_answer": majority, "majority_answer_accuracy": round(baseline, 4), "top_prediction": top,
            "top_prediction_share": round(share, 4)}


def _most_common(answers: Sequence[str]) -> str:
    """The most common answer as compared (the first met on a tie); "" for none."""
    counts = Counter(comparable_answer(a) for a in answers)
    return max(counts, key=counts.get) if counts else ""
