"""VQA data and metrics: question-answer rows from JSONL, accuracy overall and per answer type.

A QA file is JSONL with one ``{"image": path relative to the file, "question": text, "answer": text}`` per line
(optional ``"answer_type"``; a JSON array of such objects works too). A row may carry the annotators' answers as
``"answers"`` (strings, or VQA v2's ``{"answer": ...}`` objects; ``"answer"`` then defaults to the most common): such
rows score the VQA v2 soft accuracy (min(1, agreeing annotators / 3), averaged over leaving each annotator out) as the
official evaluation script computes it; the others (and a single annotator's answer) exact match, both sides compared
as the script compares a model's answer (``comparable_answer``: 'Two.' = '2').
A row with ``"choices"`` (two or more candidate answers, the answer among them) is multiple choice: the model picks
the best of those candidates (``predict_choices``, as ``answer(..., choices=...)`` ranks them).
Unusable rows (bad JSON, missing keys, missing image file) are counted and logged; a file without any usable row is
an error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

from polymodal.data.jsonl import data_file_image, existing_file, iter_json_rows, missing_image, report_skipped
from polymodal.data.parquet_rows import is_parquet, read_rows
from polymodal.data.vqa_v2 import vqa_v2_rows
from polymodal.errors import PolymodalError
from polymodal.eval.majority import majority_baseline
from polymodal.data.answers import (YES_NO, answer_text, comparable_answer, normalize_answer, soft_vqa_score,
                                    matchable, unique_choices, unmatchable_annotators, vqa_punctuation)
from polymodal.models.inputs import each_or_error, plural, readable_results
from polymodal.models.not_finite import NOT_FINITE, NotFiniteAnswer, all_not_finite, is_finite_answer

log = logging.getLogger(__name__)

QA_FORMAT = 'JSONL with one {"image": path relative to the file, "question": ..., "answer": ...} object per line'


@dataclass(frozen=True)
class QARow:
    image: Any  # a resolved Path (from a file) or anything polymodal.data.images.load_image reads
    question: str
    answer: str  # normalised (see normalize_answer)
    answer_type: str | None = None
    answers: tuple[str, ...] = ()  # the annotators' answers (VQA v2 soft accuracy) as written; () = exact match
    choices: tuple[str, ...] = ()  # candidate answers as given (multiple choice); () = open-ended
    question_id: Any = None  # the row's "question_id" (VQA v2's) for answers written for an evaluation server (None
    # in rows read to score or train: see read_qa)

    @property
    def type(self) -> str:
        """The row's answer type: its own ``answer_type`` if given, else answer_type's. Case and spaces
        aside ("Yes/No " is "yes/no"): a file typed by hand in places would otherwise split one type's figures."""
        return " ".join((self.answer_type or "").split()).lower() or answer_type(self.answer)


def answer_type(answer: str) -> str:
    """VQA v2's three types for a row that gives none: 'Yes!' is scored as yes, so typed "yes/no"; 'two' is scored
    as '2', so typed "number" (as VQA v2 types how-many answers); the rest "other"."""
    key = comparable_answer(answer)
    # ASCII digits: str.isdigit() is true of '²' and '٣' too
    return "yes/no" if key in YES_NO else "number" if key.isascii() and key.isdigit() else "other"


def read_qa(source: str | Path | Sequence[str | Path], need_answers: bool = True) -> list[QARow]:
    """One or several QA JSONL files -> rows (image paths resolved against each file's folder). Without
    ``need_answers`` (questions to answer, not to score) a row may have no answer: its ``answer`` is ""."""
    if isinstance(source, (list, tuple)):
        rows, repeats, seen = [], [], set()
        for one in source:
            for row in read_qa(one, need_answers):
                (repeats if row in seen else rows).append(row)
                seen.add(row)
        if repeats:  # the same row in two files (or one file passed twice) would count twice
            report_skipped(", ".join(map(str, source)), [(str(r.image), f"repeats the question {r.question!r} of an "
                                                          "earlier file") for r in repeats], len(rows),
                           "question-answer rows", f"pass {QA_FORMAT}", "repeated row")
        return rows
    path = existing_file(Path(source).expanduser(), "QA file", f"pass {QA_FORMAT}")
    rows, skipped, exists, repeats = [], [], {}, {}
    resolved: dict[str, Path] = {}  # a row's image as written -> its path: a photo has several questions (VQA v2: 5)
    inside = False  # images inside the file (Parquet): "<file>#<row>", no path to resolve
    if is_parquet(path):
        inside, parquet = read_rows(path, ("question",), f"pass {QA_FORMAT}")
        source = ((where, item, "") for where, item in parquet)
    else:
        source = iter_json_rows(path, f"pass {QA_FORMAT}", ("question", "answer", "answers", "choices", "answer_type"),
                                ("image",), partial(vqa_v2_rows, need_answers=need_answers))
    for where, item, why in source:
        if item is None:
            skipped.append((where, why))
            continue
        try:
            annotators = annotator_answers(item.get("answers"))
        except PolymodalError as exc:
            skipped.append((where, str(exc)))
            continue
        if item.get("answer") in (None, "") and annotators:
            spelled = [normalize_answer(a) for a in annotators]  # 'Red' and 'red' count as one
            item = {**item, "answer": max(spelled, key=spelled.count)}  # the most common, first on a tie
        missing = [k for k in ("image", "question", "answer") if item.get(k) in (None, "")]
        if missing and not (missing == ["answer"] and not need_answers):
            skipped.append((where, f"no {', '.join(missing)}"))
            continue
        if item.get("answer") in (None, ""):  # a question to answer
            item = {**item, "answer": ""}
        wrong = _wrong_types(item)
        if wrong:
            skipped.append((where, wrong))
            continue
        written = str(item["image"])
        if written not in resolved:  # resolving each row's path was 40% of reading VQA v2's 214,354 questions
            resolved[written] = written if inside else data_file_image(path.parent, written)
        image = resolved[written]
        if image not in exists:
            exists[image] = inside or image.is_file()
        if not exists[image]:
            skipped.append((where, missing_image(item["image"], path.parent)))
            continue
        question, answer = " ".join(str(item["question"]).split()), normalize_answer(item["answer"])
        if not question or (not answer and (need_answers or item["answer"])):  # blank once spaces (and for
            # answers, punctuation) are tidied
            skipped.append((where, f"blank {'question' if not question else 'answer'}"))
            continue
        try:
            choices = row_choices(item.get("choices"), answer)
        except PolymodalError as exc:
            skipped.append((where, str(exc)))
            continue
        # the id names an answer for an evaluation server; rows scored or trained on are compared without it (the
        # same photo, question and answer twice is a repeat whatever their ids), and an unhashable one broke that
        question_id = None if need_answers else item.get("question_id")
        if isinstance(question_id, bool) or not isinstance(question_id, (int, float, str, type(None))):
            skipped.append((where, f'the "question_id" must be a number or text, got {question_id!r:.60}'))
            continue
        row = QARow(image, question, answer, item.get("answer_type") or None, annotators, choices, question_id)
        if row in repeats:  # it would weigh twice in accuracy and in training, as a repeated caption would
            skipped.append((where, f"repeats {repeats[row]} (the same photo, question and answer)"))
            continue
        repeats[row] = where
        rows.append(row)
    report_skipped(path, skipped, len(rows), "question-answer rows", f"pass {QA_FORMAT}")
    return rows


def _wrong_types(item: dict) -> str | None:
    """Why a row's question / answer / answer_type would be scored as something else (str() of a list, True as
    "true"), or None when they are text (an answer may be a number: "how many" answers)."""
    answer, question, kind = item.get("answer"), item.get("question"), item.get("answer_type")
    if not isinstance(question, str):
        return f"the question must be text, got {question!r:.60}"
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        hint = '; write "yes" or "no"' if isinstance(answer, bool) else \
            '; put several annotators\' answers in "answers"' if isinstance(answer, list) else ""
        return f"the answer must be text, got {answer!r:.60}{hint}"
    if kind is not None and not isinstance(kind, str):
        return f"answer_type must be text (e.g. \"yes/no\"), got {kind!r:.60}"
    return None


def annotator_answers(value: Any) -> tuple[str, ...]:
    """A row's "answers": None, or a list of strings or of VQA v2 {"answer": ...} objects -> tuple of them as written
    (a number as its text): the official script compares them as written, less its punctuation (soft_vqa_score)."""
    if value is None:
        return ()
    if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
        raise PolymodalError(f'"answers" must be a list of the annotators\' answers, got {value!r:.60}')
    out = tuple(str(answer_text(a.get("answer", "") if isinstance(a, dict) else a)) for a in value)
    if not all(normalize_answer(a) for a in out):
        raise PolymodalError('"answers" holds a blank answer (or an object without "answer")')
    return out


def row_choices(value: Any, answer: str) -> tuple[str, ...]:
    """A row's "choices": None (open-ended), or two or more candidate answers among which is ``answer``."""
    if value is None:
        return ()
    if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
        raise PolymodalError(f'"choices" must be a list of candidate answers, e.g. ["red", "blue"], got {value!r:.60}')
    if any(isinstance(c, bool) or not isinstance(c, (str, int, float)) for c in value):
        raise PolymodalError(f'"choices" must hold text (a number is fine), got {value!r:.60}')
    if not any(str(answer_text(c)).strip() for c in value):
        raise PolymodalError('"choices" is empty; give two or more candidate answers, or leave "choices" out')
    seen = unique_choices(list(value))  # numbers as their text (answer_text), as the answer reads them
    if len(seen) < 2:
        raise PolymodalError(f'"choices" needs two or more different candidates, got {value!r:.60}')
    if answer and comparable_answer(answer) not in seen:  # (no answer: a question to answer)
        raise PolymodalError(f"the answer {answer!r} is not among its choices ({', '.join(seen.values())})")
    return tuple(seen.values())


def as_rows(rows: Iterable[Any]) -> list[QARow]:
    """QARow objects or dicts with image/question/answer(/answer_type/answers) -> QARow list."""
    out = []
    for r in rows:
        if isinstance(r, QARow):
            out.append(r)
        elif isinstance(r, dict) and all(k in r for k in ("image", "question", "answer")):
            wrong = _wrong_types(r)
            if wrong:
                raise PolymodalError(f"{wrong} (in the row {r!r:.80})")
            answer = normalize_answer(r["answer"])
            out.append(QARow(r["image"], str(r["question"]), answer, r.get("answer_type"),
                             annotator_answers(r.get("answers")), row_choices(r.get("choices"), answer)))
        else:
            raise PolymodalError(f"a VQA row needs image, question and answer; got {r!r:.80}")
    return out


def row_score(predicted: str, row: QARow) -> float:
    """One row's accuracy: VQA v2 soft accuracy when it has annotators' answers (soft_vqa_score), else exact match
    (answers compared as comparable_answer)."""
    if row.answers:
        return soft_vqa_score(predicted, row.answers)
    return float(comparable_answer(predicted) == comparable_answer(row.answer))


def accuracy_by_type(predicted: Sequence[str], rows: Sequence[QARow]) -> dict:
    """Accuracy (VQA v2 soft accuracy on rows with annotators' answers, else exact match; answers compared as
    comparable_answer) -> {"accuracy", "count", "soft_count", "per_type": {type: accuracy}, "per_type_count"}."""
    if len(predicted) != len(rows):
        raise PolymodalError(f"{len(predicted)} predictions for {len(rows)} rows")
    rows = as_rows(rows)  # dicts too, like vqa_accuracy
    hits: dict[str, list[float]] = {}
    for pred, row in zip(predicted, rows):
        hits.setdefault(row.type, []).append(row_score(pred, row))
    total = sum(sum(h) for h in hits.values())
    return {
        "accuracy": total / max(1, len(rows)),
        "count": len(rows),
        "soft_count": sum(bool(r.answers) for r in rows),
        "per_type": {t: sum(h) / len(h) for t, h in sorted(hits.items())},
        "per_type_count": {t: len(h) for t, h in sorted(hits.items())},
    }


def vqa_accuracy(model, rows: Iterable[Any], cache: bool = True, progress: bool = False,
                 details: list | None = None) -> dict:
    """Exact-match accuracy of a fusion encoder on QA rows, overall and per answer type (a row's own answer_type,
    else answer_type's "yes/no", "number" or "other"); rows with choices are multiple choice, also reported apart.
    With ``cache``, the rows' image and question features go through the on-disk feature cache (image paths only),
    so a second evaluation costs no tower pass. ``details``, a list, gets one dict per row: its
    image, question, answer (and choices, if any), the predicted answer, the model's confidence in it and the row's
    score (its correctness), or why its image could not be read or why it was left out. Beside the accuracy, the
    majority answer's on the same rows, and the model's most given answer and its share (polymodal.eval.majority,
    which warns when that share is 90% or more). A row whose answers the
    model scores as NaN or inf is left out with one warning and counted as ``not_finite`` (every row so: an
    error)."""
    from polymodal.registry import require_vqa

    require_vqa(model)
    rows = as_rows(rows)
    if not rows:
        raise PolymodalError("no rows to evaluate")
    warn_of_unmatchable_annotators(rows)
    results, unscorable = answer_rows(model, rows, cache, progress,
                                      lambda: warn_of_answers_outside(model, [r for r in rows if not r.choices]))
    # a row whose image cannot be read is left out (as training does), with one warning; none readable is an error
    kept, nan = scored_rows(results)
    if details is not None:
        details.extend({"image": str(r.image), "question": r.question, "answer": r.answer,
                        **({"choices": list(r.choices)} if r.choices else {}),
                        **({"error": res} if isinstance(res, str) else
                           {"predicted": res[0], "confidence": round(float(res[1]), 4),
                            "score": round(row_score(res[0], r), 4)})}
                       for r, res in zip(rows, results))
    # 4 decimals, as every eval command's figures (the official script prints 2 of a percentage): 0.7333, not
    # 0.7333333333333333 (accuracy_by_type's figures stay exact for training and export checks)
    predicted, scored = [results[i][0] for i in kept], [rows[i] for i in kept]
    out = {**_rounded(accuracy_by_type(predicted, scored)), "unreadable": len(rows) - len(kept) - nan,
           "not_finite": nan, **majority_baseline(predicted, scored)}  # what the accuracy is read against
    mc = [i for i in kept if rows[i].choices]
    if mc:  # reported apart too: choosing among a few candidates is an easier task than open answers
        out["multiple_choice_count"] = len(mc)
        out["multiple_choice_accuracy"] = round(accuracy_by_type([results[i][0] for i in mc],
                                                                 [rows[i] for i in mc])["accuracy"], 4)
        # rows counted wrong: the model scores none of their choices
        out["multiple_choice_unscorable"] = sum(rows[i].choices in unscorable for i in mc)
    return out


def _rounded(metrics: dict) -> dict:
    """accuracy_by_type's figures to 4 decimals (its counts as they are)."""
    return {**metrics, "accuracy": round(metrics["accuracy"], 4),
            "per_type": {t: round(a, 4) for t, a in metrics["per_type"].items()}}


def answer_rows(model, rows: list[QARow], cache: bool = True, progress: bool = False, before=None
                ) -> tuple[list, dict]:
    """Each row answered -> ([(answer, confidence), or why its photo could not be read or NOT_FINITE (a str)],
    unscorable_choices).
    A multiple-choice row whose choices the model can score none of gets ("", 0.0). ``before``: called once the
    choices are checked and before any image is read (a warning of the caller's). ``cache``: see vqa_accuracy."""
    from polymodal.models.fusion_encoder import FusionEncoder

    open_rows = [r for r in rows if not r.choices]
    unscorable = unscorable_choices(model, [r for r in rows if r.choices], len(open_rows))  # errors before images
    if before is not None:
        before()
    # a row whose choices the model cannot score is still asked (as an open question, its answer then dropped): its
    # photo may be unreadable, which must count as "unreadable" (and fail --strict), not as a scored wrong row
    asked = [replace(r, choices=()) if r.choices in unscorable else r for r in rows]
    if cache and isinstance(model, FusionEncoder) and all(isinstance(r.image, (str, Path)) for r in asked):
        from polymodal.train.vqa import cached_predictions

        answered = cached_predictions(model, [r.image for r in asked], [r.question for r in asked], progress=progress,
                                      skip_unreadable=True, choices=[list(r.choices) for r in asked]) if asked else []
    else:
        from polymodal.progress import progress_bar

        with progress_bar(total=len(asked), desc="questions", unit="q", disable=not progress) as bar:
            answered = each_or_error(lambda chunk: _predict_rows(model, chunk), asked, 256, bar)
    # NaN checked on what the model said, the rows of unscorable choices too: their ("", 0.0) was no answer of the
    # model's, and counting it as one scored a model answering every question as NaN over those rows alone
    answered = _finite(answered, asked)
    return [("", 0.0) if r.choices in unscorable and not isinstance(res, str) else res
            for r, res in zip(rows, answered)], unscorable


def _finite(results: list, rows: list[QARow]) -> list:
    """answer_rows' results with each answer scored NaN or inf as NOT_FINITE (its row left out, not counted as the
    vocabulary's first answer), with one warning; every answered row so is one error (a broken model)."""
    answered = [i for i, res in enumerate(results) if not isinstance(res, str)]
    bad = [i for i in answered if not is_finite_answer(results[i])]
    if not bad:
        return results
    first = f"{rows[bad[0]].question!r:.80} on {rows[bad[0]].image}"
    if len(bad) == len(answered):
        raise all_not_finite(len(bad), first=first)
    log.warning("left out %s whose answers the model scores as NaN or inf (first: %s): no answer can be chosen; "
                "the figures are over the rest", plural(len(bad), "question"), first)
    bad = set(bad)
    return [NOT_FINITE if i in bad else res for i, res in enumerate(results)]


def scored_rows(results: list, what: str = "row") -> tuple[list[int], int]:
    """answer_rows' results -> (the positions of those answered, how many are NOT_FINITE); one warning for the
    unreadable rest (readable_results), none readable is an error."""
    nan = sum(res == NOT_FINITE for res in results)
    readable = readable_results([None if res == NOT_FINITE else res for res in results], what)
    return [i for i in readable if results[i] != NOT_FINITE], nan


def answers_outside(answers: Sequence[str], rows: Sequence[QARow]) -> list[QARow]:
    """The open ``rows`` no answer of the vocabulary ``answers`` can score on: their answer (or every annotator's
    answer) is outside it, so they count as wrong whatever the model sees."""
    known = {comparable_answer(a) for a in answers}
    open_rows = [r for r in rows if not r.choices]
    # each distinct answer compared once: 100k rows of 10 annotators' answers hold a few thousand (1-2 s -> 0.1 s)
    fits = {a: comparable_answer(a) in known for a in {a for r in open_rows for a in (r.answers or (r.answer,))}}
    return [r for r in open_rows if not any(fits[a] for a in (r.answers or (r.answer,)))]


def warn_of_answers_outside(model, rows: Sequence[QARow], what: str = "open questions",
                            counted: str = "they count as wrong") -> int:
    """One warning when open ``rows`` have answers ``model`` can never give (outside its answer vocabulary, e.g. 'red'
    for coco-yesno, or an answer too rare to make a trained model's vocabulary): accuracy counts them as wrong, and
    a whole file of them scored 0 with nothing said (`eval vqa --model coco-yesno` on open questions). -> how many."""
    answers = getattr(model, "answers", None)
    if not answers:
        return 0
    outside = answers_outside(answers, rows)
    if outside:
        names = list(dict.fromkeys(r.answer for r in outside))
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        log.warning("%s of %s have answers outside %s's %s (%s%s): %s, as the model can never give them",
                    f"{len(outside):,}", plural(sum(not r.choices for r in rows), what.rstrip("s")),
                    getattr(model, "name", "the model"), plural(len(answers), "answer"),
                    ", ".join(map(repr, names[:5])), more, counted)
    return len(outside)


def warn_of_unmatchable_annotators(rows: Sequence[QARow]) -> int:
    """One warning when annotators' answers are written so that no answer can match them as the official script
    compares them (a custom file's 'Two' or 'A dog': it never lower-cases them or maps their words); -> how many
    rows. Silent scores of 0 otherwise: polymodal compared them fully normalised before stop 51."""
    written = set().union(*(r.answers for r in rows))  # each answer checked once (VQA v2 val: 2 million, ~2,000)
    doubtful = {a for a in written if not matchable(a) or not matchable(vqa_punctuation(a))}
    found = [bad for r in rows if not doubtful.isdisjoint(r.answers) for bad in [unmatchable_annotators(r.answers)]
             if bad]
    if found:
        names = list(dict.fromkeys(a for bad in found for a in bad))
        log.warning("%s %s annotators' answers that no model answer can match, as the official VQA evaluation "
                    "compares them (%s%s); in a file of your own, write them in lower case, with digits and without "
                    "articles ('2', 'dog')", plural(len(found), "row"), "has" if len(found) == 1 else "have",
                    ", ".join(map(repr, names[:5])), f" and {len(names) - 5} more" if len(names) > 5 else "")
    return len(found)


def _predict_rows(model, rows: list[QARow]) -> list:
    """Open rows answered by ``predict``, multiple-choice rows by ``predict_choices``, back in the rows' order."""
    from polymodal.eval.retrieval import inside_as_bytes

    open_rows, mc_rows = [r for r in rows if not r.choices], [r for r in rows if r.choices]
    answered = iter(_scored(model.predict, [inside_as_bytes(r.image) for r in open_rows],
                            [r.question for r in open_rows]) if open_rows else [])
    chosen = iter(_scored(model.predict_choices, [inside_as_bytes(r.image) for r in mc_rows],
                          [r.question for r in mc_rows], [list(r.choices) for r in mc_rows]) if mc_rows else [])
    return [next(chosen) if r.choices else next(answered) for r in rows]


def _scored(predict, images: list, *args) -> list:
    """predict(images, *args), with rows the model scores all as NaN as (no answer, NaN) again: predict() raises
    for them, and each_or_error would retry them one by one and count each as unreadable; _finite counts them."""
    try:
        return predict(images, *args)
    except NotFiniteAnswer:
        return [("", math.nan)] * len(images)


def unscorable_choices(model, rows: list[QARow], open_rows: int = 0) -> dict:
    """{choices: the model's error} for each distinct list of choices in the multiple-choice ``rows`` that the model
    can score none of. The model checks each distinct list once, so what it says is said once. Such a row counts
    as wrong, as an open answer outside the vocabulary does; when that is every row (and there are no
    ``open_rows``), the model is the wrong one: an error."""
    if not rows:
        return {}
    if not hasattr(model, "predict_choices"):
        raise PolymodalError(f"{getattr(model, 'name', type(model).__name__)} cannot rank given choices; drop "
                             '"choices" from the rows or evaluate a VQA model such as easy-vqa')
    notes, unscorable = [], {}
    for choices in dict.fromkeys(r.choices for r in rows):
        try:
            notes.append(model.check_choices(list(choices))[1])
        except PolymodalError as exc:
            unscorable[choices] = exc
    count = sum(r.choices in unscorable for r in rows)
    if count == len(rows) and not open_rows:
        first = next(iter(unscorable.values()))
        raise first if len(unscorable) == 1 else PolymodalError(
            f"the model can score none of the choices of any row (first: {first})")
    notes = [n for n in notes if n]
    if notes:
        log.warning("%s%s", notes[0], f" (and in {len(notes) - 1} other lists of choices)" if len(notes) > 1 else "")
    if unscorable:
        log.warning("%s counted as wrong: the model can score none of their choices (first: %s)",
                    plural(count, "multiple-choice row"), next(iter(unscorable.values())))
    return unscorable
