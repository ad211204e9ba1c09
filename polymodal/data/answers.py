"""Answers as VQA compares them (torch-free: the ONNX runtime shares it with the PyTorch models)."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
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


# The official VQA evaluation's tables, copied as they stand (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/
# vqaEval.py at c4e6a0e, (c) 2014 Aishwarya Agrawal): answers compared as published VQA accuracies compare them. Its
# lookups come after lower-casing, so the keys "Im", "Ive", "Id've" and "I'dve" never match ("im" stays "im").
_CONTRACTIONS = {"aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"}
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# the marks processPunctuation takes out; it keeps the others: "'" (contractions), ':' ("10:30"), '%', '$', '&', '#'
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# typographic apostrophes and quotes, as word processors, phones and language models write them, read as the ASCII
# marks the tables above hold: "don’t" is "don't", “yes” is "yes". The official script has no such step (there
# "don’t" misses "don't"): the one place polymodal scores more leniently than it, on answers differing in typing only
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_STRAY_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # as written there: in effect a full stop not before a digit


@lru_cache(maxsize=1 << 16)  # an evaluation compares each of a few thousand answers again and again
def vqa_punctuation(text: str) -> str:
    """The official script's processPunctuation: each mark of _VQA_PUNCTUATION becomes a space, or goes where one
    stands beside a space or the answer holds a number such as "1,000" (decided on the answer as given, for each
    mark alike); then a full stop goes unless a digit follows ("3.5", ".5" keep theirs). Case is kept."""
    glued = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _VQA_PUNCTUATION:
        if mark in text:
            out = out.replace(mark, "" if glued or mark + " " in text or " " + mark in text else " ")
    return _STRAY_PERIOD.sub("", out, 32)  # there re.UNICODE (32) is passed as the count: at most 32 full stops go


def comparable_answer(text: Any) -> str:
    """An answer as the official VQA evaluation compares a model's answer: vqa_punctuation, lower case, number words
    as digits ("none" = "0"), articles dropped, a contraction missing its apostrophe given one: 'Two dogs!' ->
    '2 dogs', 'the red one' -> 'red 1', '1,000' -> '1000', 'dont' -> "don't", and "don’t" too (_TYPOGRAPHIC);
    "it's" and "its" stay apart. Used for every answer polymodal compares (choices, vocabularies, training classes,
    exact-match rows) so that they agree with the score."""
    return _comparable(str(answer_text(text)))


@lru_cache(maxsize=1 << 16)
def _comparable(text: str) -> str:
    text = text.replace("\n", " ").replace("\t", " ").strip().translate(_TYPOGRAPHIC)
    words = (_MANUAL_MAP.get(w, w) for w in vqa_punctuation(text).lower().split())
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def annotators_as_compared(annotators: Sequence[str]) -> list[str]:
    """The annotators' answers (as written in the data) as the official script compares them with a model's
    comparable_answer: unchanged when they all agree, else with vqa_punctuation alone. Neither lower case, digits
    nor articles: 'Two' or 'a dog' is matched by no answer (see unmatchable_annotators). Typographic apostrophes
    and quotes read as ASCII ones first (_TYPOGRAPHIC), as in a model's answer."""
    annotators = [a.translate(_TYPOGRAPHIC) for a in annotators]
    return [vqa_punctuation(a) for a in annotators] if len(set(annotators)) > 1 else list(annotators)


def soft_vqa_score(predicted: Any, annotators: Sequence[str]) -> float:
    """VQA v2 accuracy of a model's answer against the annotators' answers (as written): the official script's mean,
    over leaving out each annotator in turn, of min(1, matching others / 3), answers compared as it compares them
    (comparable_answer, annotators_as_compared). Ten annotators who all agree: 1.0; two of ten: 0.6. One annotator
    is exact match of comparable_answer on both sides (a file's single answer; the formula would always give 0)."""
    predicted = comparable_answer(predicted)
    if len(annotators) == 1:
        return float(predicted == comparable_answer(annotators[0]))
    matches = [a == predicted for a in annotators_as_compared(annotators)]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(annotators)


def matchable(text: str) -> bool:
    """Whether a model's answer can compare equal to ``text``: comparable_answer gives it back ('2', not 'Two')."""
    return comparable_answer(text) == text


def unmatchable_annotators(annotators: Sequence[str]) -> list[str]:
    """Those of a row's annotators' answers that no model answer can match as soft_vqa_score compares them ('Two',
    'a dog', 'Yes'). [] for a single answer (exact match)."""
    if len(annotators) < 2:
        return []
    return [a for a, c in zip(annotators, annotators_as_compared(annotators)) if not matchable(c)]


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
