"""Answers as VQA compares them (torch-free: the ONNX runtime shares it with the PyTorch models)."""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

YES_NO = ("yes", "no")


def answer_text(value: Any) -> Any:
    """A number as the text that answers with it: 2 -> "2", and 2.0 -> "2" too (JSON writers often give a count as
    2.0, and "2.0" would match neither the choice 2 nor the annotators' "2"); 2.5 -> "2.5". Anything else (text,
    True) as it is. Answers, annotators' answers and choices all read numbers this way, in a QA file and in
    ``answer(..., choices=[1, 2])`` alike."""
    import numbers

    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    number = float(value)
    # str(value), not str(number): numpy's float32 0.1 is "0.1", where float() of it is 0.10000000149011612
    return str(int(number)) if number.is_integer() else str(value)


def normalize_answer(text: Any) -> str:
    """Lower case, single spaces, no trailing full stop: 'Yes.' and ' yes' are the same answer."""
    return " ".join(str(answer_text(text)).lower().split()).rstrip(".").strip()


_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"  # as VQA v2's manualMap: "how many ...?" "none" is the answer 0
_ARTICLES = {"a", "an", "the"}


# The marks VQA v2's evaluation script (vqaEval.py's processPunctuation) takes out of an answer; it keeps the others
# (':' in "10:30", '%', '$', '&', '#'), so "10:30" is no "10 30" and "50%" no "50"
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA = re.compile(r"\d,\d")
_STRAY_PERIOD = re.compile(r"\.(?!\d)")  # a full stop not before a digit: "3.5" and ".5" keep theirs


def comparable_answer(text: Any) -> str:
    """An answer as the VQA v2 evaluation compares it: normalize_answer, then its punctuation rule (the marks of
    _VQA_PUNCTUATION become spaces, or go where one stands beside a space or the answer holds a number such as
    "1,000", which becomes "1000"; a full stop goes unless a digit follows), number words as digits, articles
    dropped: 'Two dogs!' -> '2 dogs', 'the red one' -> 'red 1', '1,000' -> '1000'. One difference: apostrophes are
    dropped ("don't" = "dont", as the official script's list of contractions also makes them, but "it's" = "its" and
    "girl's" = "girls" too, which it tells apart)."""
    text = normalize_answer(text).replace("'", "").replace("\u2019", "")
    given, glued = text, _DIGIT_COMMA.search(text) is not None
    for mark in _VQA_PUNCTUATION:
        if mark in text:  # as the official script decides it: from the answer as given, for each mark alike
            text = text.replace(mark, "" if glued or mark + " " in given or " " + mark in given else " ")
    words = [_NUMBERS.get(w, w) for w in _STRAY_PERIOD.sub("", text).split() if w not in _ARTICLES]
    return " ".join(words)


def soft_vqa_score(predicted: str, annotators: Sequence[str]) -> float:
    """VQA v2 accuracy of one prediction against the annotators' answers (all already comparable_answer): the mean,
    over leaving out each annotator in turn, of min(1, matching others / 3). Ten annotators who all agree: 1.0;
    two of ten: 0.6."""
    matches = sum(a == predicted for a in annotators)
    if len(annotators) == 1:
        return float(matches)
    return sum(min(1.0, (matches - (a == predicted)) / 3) for a in annotators) / len(annotators)


def unique_choices(choices: Sequence[Any]) -> dict[str, str]:
    """Candidate answers -> {comparable_answer: as given (first spelling wins)}; blank ones dropped; none left is an
    error. Keyed as evaluation compares answers, so "a triangle" finds the answer "triangle" (see `choice_index`)."""
    from polymodal.models.inputs import as_texts

    if isinstance(choices, str) and "," in choices:  # answer(img, q, choices="yes,no") meant two, not one
        raise PolymodalError(f"choices is one string ({choices!r}); pass a list of candidate answers, e.g. "
                             f"{[c.strip() for c in choices.split(',') if c.strip()]!r}")
    if isinstance(choices, Iterable) and not isinstance(choices, (str, bytes, Mapping)):  # [1, 2]: "1", "2"
        choices = [answer_text(c) for c in choices]
    seen: dict[str, str] = {}
    for c in as_texts(choices, "choices"):  # one string is one choice, not its letters
        if c.strip():
            seen.setdefault(comparable_answer(c), c.strip())
    if not seen:
        raise PolymodalError("no choices given; pass candidate answers: --choices yes,no, or choices=['yes', 'no'] "
                             "in Python")
    return seen


def checked_choices(choices: Any, check) -> Any:
    """answer()'s ``choices``, read once (a generator is checked here and ranked afterwards) and passed to the model's
    ``check`` (check_choices), whose warning is given before the image is read. None stays None."""
    if choices is None:
        return None
    if isinstance(choices, Iterator):
        choices = list(choices)
    warn_of(check(choices)[1])
    return choices


def check_row_choices(choices: Any, rows: int, check) -> list[list[str]]:
    """predict_choices()'s per-row candidate lists: one list per row, or one flat list of strings that every row
    shares (["red", "blue"] means those two for each row, not one candidate per row, which would always "win").
    Each distinct list is passed to ``check`` (the model's check_choices: it raises before any image is read when
    the model can score none of a row's candidates; its warnings about candidates that score 0 are left to answer()
    and eval, which give them once, not per batch)."""
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise PolymodalError(f"choices must hold one list of candidate answers per row (or one list that every row "
                             f"shares), got {type(choices).__name__}")
    if choices and all(isinstance(c, str) for c in choices):
        choices = [list(choices)] * rows
    bad = next((i for i, c in enumerate(choices) if not isinstance(c, (str, list, tuple))), None)
    if bad is not None:
        raise PolymodalError(f"row {bad}'s choices must be a list of candidate answers, got {choices[bad]!r:.60}")
    choices = [[c] if isinstance(c, str) else list(c) for c in choices]  # a row's one string is one candidate
    if len(choices) != rows:
        raise PolymodalError(f"got {len(choices)} lists of choices for {rows} rows; pass one list per row")
    for distinct in dict.fromkeys(tuple(c) for c in choices):
        check(list(distinct))
    return choices


def warn_of(note: str) -> None:
    """A model's check_choices note (candidates it cannot score), as one warning; "" is nothing to say."""
    if note:
        log.warning("%s", note)


def choice_index(answers: Sequence[str]) -> dict[str, int]:
    """A model's answer vocabulary -> {comparable_answer: its index} (the first of answers that compare equal), the
    keys `unique_choices` gives: a vocabulary written "Yes"/"No" still finds the choice "yes"."""
    index: dict[str, int] = {}
    for i, a in enumerate(answers):
        index.setdefault(comparable_answer(a), i)
    return index
