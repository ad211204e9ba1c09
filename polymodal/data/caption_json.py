"""The two JSON files captioned photo sets usually come as, turned into pair rows: COCO's caption annotations
(`captions_train2017.json`: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}) and
Karpathy's splits (`dataset_coco.json`, `dataset_flickr8k.json`: {"images": [{"filename", "filepath"?, "split",
"sentences": [{"raw"}]}]}), so `--pairs` takes them as downloaded, without a conversion script.

Image paths: COCO's `file_name` is relative to the photo folder, which COCO's layout keeps beside `annotations/`
(`annotations/captions_val2017.json` and `val2017/`); it is looked for beside the file, then there. Karpathy's are
`filepath/filename` relative to the file's folder (put it in the photos' root).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from polymodal.errors import PolymodalError

PHOTOS_LOOKED_FOR = 100  # photos tried in turn to find where a COCO file's photos lie (all missing: ~2 stats each)


def caption_json_rows(path: Path, document: Any) -> list[dict] | None:
    """Rows {"image", "caption", "split"?} of a COCO or Karpathy caption file, or None when ``document`` is neither
    (rows of another kind, left to the caller). Rows keep the file's order: COCO's by annotation."""
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        return None
    if isinstance(document.get("annotations"), list):
        return _coco_rows(path, document)
    if any(isinstance(i, dict) and "sentences" in i for i in document["images"]):
        return _karpathy_rows(document)
    return None


def _coco_rows(path: Path, document: dict) -> list[dict]:
    names = {}
    for image in document["images"]:
        # an id is a number or a text in COCO's files; a list or object (a hand-edited file) is no key to look up
        if isinstance(image, dict) and isinstance(image.get("id"), (int, str)) \
                and isinstance(image.get("file_name"), str):
            names[image["id"]] = image["file_name"]
    if not names:
        raise PolymodalError(f'{path} has COCO "annotations" but no "images" with an "id" and a "file_name"; '
                             "pass COCO's captions_*.json as downloaded")
    folder = _photo_folder(path, list(names.values()))
    rows = []
    for note in document["annotations"]:
        if not isinstance(note, dict):
            rows.append(None)  # reported by the caller as "not a JSON object"
            continue
        image_id = note.get("image_id")
        name = names.get(image_id) if isinstance(image_id, (int, str)) else None
        if name is None:
            rows.append(PolymodalError(f'its image_id {image_id!r:.40} is the "id" of no entry in "images"'))
            continue
        rows.append({"caption": note.get("caption"), "image": folder + name})
    return rows


def _photo_folder(path: Path, file_names: list[str]) -> str:
    """"" when the photos lie beside the file, the val2017/ folder in COCO's layout (annotations/captions_val2017.json
    beside val2017/), else "" (each missing photo is then reported with where it was looked for). Decided by the
    first photo found in either place: judged by the first photo listed alone, one missing photo made every row
    of a file in COCO's layout "not found"."""
    split = re.fullmatch(r"captions_(\w+)\.json", path.name.lower())
    for name in file_names[:PHOTOS_LOOKED_FOR]:
        if (path.parent / name).is_file():
            return ""
        if split and (path.parent.parent / split.group(1) / name).is_file():
            # the folder itself, not "../val2017/": a missing photo is then named where it was looked for, not
            # as annotations/../val2017/x.jpg
            return f"{(path.parent.parent / split.group(1)).resolve()}{os.sep}"
    return ""


def _karpathy_rows(document: dict) -> list[dict]:
    rows = []
    for image in document["images"]:
        if not isinstance(image, dict):
            rows.append(None)
            continue
        name = image.get("filename")
        if isinstance(name, str) and isinstance(image.get("filepath"), str):
            name = f"{image['filepath']}/{name}"
        split = {"split": image["split"]} if isinstance(image.get("split"), str) else {}
        sentences = image.get("sentences") or [{}]
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            rows.append({**({"image": name} if name is not None else {}), "caption": raw, **split})
    return rows

