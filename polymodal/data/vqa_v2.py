"""VQA v2's files as downloaded, read as question rows: `--qa v2_OpenEnded_mscoco_val2014_questions.json`.

The questions file holds no answers and names no photo files: the answers are in the annotations file of the same
split (v2_mscoco_val2014_annotations.json), joined on question_id, and each photo is COCO's
`val2014/COCO_val2014_<image_id, 12 digits>.jpg`. Both are looked for where the VQA download and COCO's put them
(below), so that the files need no conversion; a row gets the annotation's ten answers (VQA v2's soft accuracy),
its most common answer and its answer type.
"""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.errors import PolymodalError


def vqa_v2_rows(path: Path, document, need_answers: bool = True) -> list | None:
    """Rows {"image", "question", "question_id", "answers", "answer", "answer_type"} of a VQA v2 questions document
    read from ``path`` (a PolymodalError in the list for a question without an annotation), or None for another
    document. Without ``need_answers`` (questions to answer: test-dev's have no published answers) the annotations
    are read only where the file is found, and a question without one is a row without answers."""
    if not _holds(document, "questions", "question_id"):
        if _holds(document, "annotations", "question_id"):
            raise PolymodalError(f"{path} is VQA v2's annotations file; pass its questions file "
                                 "(v2_OpenEnded_mscoco_<split>_questions.json), whose answers it finds here")
        return None
    # the folders around it, as absolute paths: a relative `--qa Questions/...json` has "." as its parent's parent,
    # and a photo path made from it was read again from the questions file's folder (every row "not found")
    path = path.absolute()
    split = str(document.get("data_subtype") or "")
    answers = _annotations(path, split) if need_answers or _annotations_file(path, split)[0] else {}
    # test-dev's photos are a part of COCO's test2015 (test2015/COCO_test2015_...jpg): there is no test-dev folder
    split = split.replace("test-dev", "test")
    photos = _photo_folder(path, split)
    rows: list = []
    for q in document["questions"]:
        if not isinstance(q, dict):
            rows.append(PolymodalError(f"a question must be an object, got {q!r:.60}"))
            continue
        a = answers.get(q.get("question_id"))
        if a is None and need_answers:
            rows.append(PolymodalError(f"question_id {q.get('question_id')!r} has no annotation in the annotations "
                                       "file"))
            continue
        image_id = q.get("image_id")
        name = f"COCO_{split}_{image_id:012d}.jpg" if isinstance(image_id, int) else f"{image_id}"
        row = {"image": str(photos / name), "question": q.get("question"), "question_id": q.get("question_id")}
        if a is not None:
            row.update(answers=[x.get("answer") if isinstance(x, dict) else x for x in a.get("answers") or []],
                       answer=a.get("multiple_choice_answer"), answer_type=a.get("answer_type"))
        rows.append(row)
    return rows


def _holds(document, key: str, field: str) -> bool:
    items = document.get(key) if isinstance(document, dict) else None
    return isinstance(items, list) and bool(items) and isinstance(items[0], dict) and field in items[0]


def _annotations(path: Path, split: str) -> dict:
    """question_id -> its annotation, from the split's annotations file beside the questions file or in
    ../Annotations (the VQA download's folders)."""
    found, tried = _annotations_file(path, split)
    name = tried[0].name
    if found is None:
        raise PolymodalError(f"{path} is VQA v2's questions of {split or 'a split'}; their answers are in {name}, "
                             f"found neither at {tried[0]} nor at {tried[1]}: put it there (test and test-dev "
                             "questions have no published answers: they cannot be scored or trained on; "
                             f"`polymodal vqa --qa {path.name} --out results.json` answers them for the VQA "
                             "evaluation server)")
    try:
        with open(found, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError) as exc:
        raise PolymodalError(f"cannot read {found} ({exc}); download VQA v2's annotations file again") from exc
    if not _holds(document, "annotations", "question_id"):
        raise PolymodalError(f"{found} holds no VQA v2 annotations; download VQA v2's annotations file again")
    return {a.get("question_id"): a for a in document["annotations"] if isinstance(a, dict)}


def _annotations_file(path: Path, split: str) -> tuple[Path | None, list[Path]]:
    """-> (the split's annotations file, or None; where it was looked for)."""
    name = f"v2_mscoco_{split}_annotations.json"
    tried = [path.parent / name, path.parent.parent / "Annotations" / name]
    return next((p for p in tried if p.is_file()), None), tried


def _photo_folder(path: Path, split: str) -> Path:
    """COCO's photo folder of the split: `<split>/` beside the questions file, beside its folder, or in the VQA
    tools' Images/mscoco/ (or Images/, images/) beside it."""
    up = path.parent.parent
    tried = [path.parent / split, up / split, up / "Images" / "mscoco" / split, up / "Images" / split,
             up / "images" / split]
    found = next((p for p in tried if p.is_dir()), None)
    if found is None:
        raise PolymodalError(f"{path} is VQA v2's questions of {split or 'a split'}, on COCO's {split} photos; no "
                             f"folder {split}/ found at {', '.join(map(str, tried))}: put COCO's {split} folder "
                             "(or a link to it) in one of them")
    return found
