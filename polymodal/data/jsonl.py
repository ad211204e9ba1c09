"""Rows of a JSONL file (one object per line, read as a stream) or of a JSON array of objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from polymodal.errors import PolymodalError


def existing_file(path: Path, what: str, fix: str) -> Path:
    """``path``, or one error: "{what} not found", or that it is a folder (a photo folder passed where its list of
    rows goes is a common slip), each ending with ``fix``."""
    if path.is_dir():
        raise PolymodalError(f"{path} is a folder, not a {what}; {fix}")
    if not path.is_file():
        raise PolymodalError(f"{what} not found: {path}; {fix}")
    return path


def iter_json_rows(path: Path, fix: str) -> Iterator[tuple[str, dict | None, str]]:
    """-> (where "file:line", row, "") per usable object, or (where, None, why) per unusable line. A file that
    starts as a JSON array but does not parse is an error whose message ends with ``fix``."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":  # a JSON array of row objects is accepted too
            try:
                items = enumerate(json.load(f), 1)
            except json.JSONDecodeError as exc:
                raise PolymodalError(f"{path} is not valid JSON ({exc}); {fix}") from exc
        else:
            items = ((n, line) for n, line in enumerate(f, 1) if line.strip())
        for n, item in items:
            where = f"{path}:{n}"
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError as exc:
                    yield where, None, f"bad JSON ({exc.msg})"
                    continue
            if not isinstance(item, dict):
                yield where, None, "not a JSON object"
                continue
            yield where, item, ""


def missing_image(image, folder: Path) -> str:
    """Why a data file's row is skipped when its image is not there: the path that was tried, since a relative
    path is read from the data file's folder, not from where the command runs."""
    given = Path(str(image)).expanduser()
    if given.is_absolute():
        return f"image file not found: {image}"
    hint = ("; this one exists relative to the working directory: make it relative to the data file, or absolute"
            if given.is_file() else "")
    return f"image file not found: {image}, read as {folder / given} (paths are relative to the data file{hint})"
