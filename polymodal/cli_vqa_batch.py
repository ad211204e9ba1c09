"""`polymodal vqa --qa FILE [--out FILE]`: every question of a file answered in one run (the model loaded once, each
photo's features computed once), where `polymodal vqa IMAGE QUESTION` answers one per process. Rows need no answer,
so VQA v2's test-dev questions (answers unpublished) are answered too, and `--out results.json` writes the results
file the VQA evaluation server takes ([{"question_id", "answer"}])."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

OUT_KINDS = ".jsonl (one JSON line per question) or .json (the VQA evaluation server's results file)"


def answer_questions_file(args) -> int:
    from polymodal.cache import atomic_write_bytes
    from polymodal.cli_vqa import _load_vqa_model, given_choices
    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.per_item import check_out
    from polymodal.eval.vqa import answer_rows, read_qa, scored_rows
    from polymodal.models.inputs import plural

    if args.image is not None:
        raise PolymodalError("pass an image and a question, or --qa FILE, not both (the questions file names each "
                             "row's image)")
    if args.explain:
        raise PolymodalError("--explain draws the heat map of one question; drop it with --qa, or ask that question "
                             "alone: polymodal vqa IMAGE QUESTION --explain map.png")
    suffix = Path(args.out).suffix.lower() if args.out else None
    if suffix not in (None, ".json", ".jsonl"):
        raise PolymodalError(f"--out {args.out}: name it {OUT_KINDS}")
    check_out(args.out, args.qa)
    choices = given_choices(args)
    with counting_skipped() as skipped:
        rows = read_qa(args.qa, need_answers=False)
    if suffix == ".json":
        unnamed = sum(r.question_id is None for r in rows)
        if unnamed:  # the server matches answers to questions by id
            raise PolymodalError(f"--out {args.out}: {unnamed:,} of the {len(rows):,} questions have no "
                                 "\"question_id\", by which a results file names each answer; give each row one, or "
                                 f"write --out {Path(args.out).with_suffix('.jsonl')} (one JSON line per question)")
    if choices:
        rows = [r if r.choices else replace(r, choices=tuple(choices)) for r in rows]
    model = _load_vqa_model(args.model, args.runtime, args.precision)
    results, _ = answer_rows(model, rows, progress=not args.quiet)
    # one warning for unreadable photos (none readable is an error), apart from the questions answered as NaN
    kept, nan = scored_rows(results, "question")
    unreadable = len(results) - len(kept) - nan
    items = []
    for row, result in zip(rows, results):
        item = {"image": str(row.image), "question": row.question}
        if row.question_id is not None:
            item["question_id"] = row.question_id
        item.update({"error": result} if isinstance(result, str) else
                    {"answer": result[0], "score": round(float(result[1]), 4)})
        items.append(item)
    if suffix == ".json":  # the server wants an answer to every question it asked
        for count, why in ((unreadable, "whose photo could not be read"),
                           (nan, "whose answers the model scores as NaN")):
            if count:
                log.warning("%s %s %s the answer \"\" in %s", plural(count, "question"), why,
                            "have" if count > 1 else "has", args.out)
        if skipped[0]:
            log.warning("%s (above) left out of %s: the evaluation server refuses a results file without every "
                        "question's answer; fix them and run again", plural(skipped[0], "skipped row"), args.out)
        text = json.dumps([{"question_id": i["question_id"], "answer": i.get("answer", "")} for i in items])
    else:
        text = "".join(json.dumps(item) + "\n" for item in items)
    if args.out is None:
        print(text, end="")
        return 0
    atomic_write_bytes(Path(args.out), text.encode())
    print(json.dumps({"model": getattr(model, "key", args.model), "questions": len(rows),
                      "unreadable": unreadable, "not_finite": nan, "out": args.out}))
    return 0
