"""Zero-shot labels in a CSV (or TSV) file, as a spreadsheet saves them: labelled photos (`eval zeroshot
--labels-file`, `eval images`, `train --zeroshot-labels`: an image column and a label column, as `--pairs` CSVs have
an image and a caption column) and label names (`classify --labels-from`, `eval zeroshot --classes`: one column, its
header optional). Read as such, a CSV's header is no label and "cat,a photo of a cat" is no class name."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator, Sequence

from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError

NAME_COLUMNS = ("label", "labels", "class", "category", "name")  # a names file's header, when it has one


def is_csv(path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".tsv")


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of the file's non-blank lines; tab-separated for .tsv or a tab in the first line,
    semicolon-separated as Excel writes a CSV where the decimal mark is a comma (its "sep=;" first line, or a ";"
    and no "," in the first line: "label;description" was read as one class named so)."""
    from polymodal.data.jsonl import utf8_text

    with utf8_text(path, newline="") as f:
        lines = f.read().splitlines()
    first = next((n for n, line in enumerate(lines) if line.strip()), 0)
    excel = re.fullmatch(r'"?sep=(.)"?', lines[first].strip()) if lines else None
    if excel:  # the separator Excel's rows use, said on a line of its own (no header)
        lines[first] = ""
    head = lines[first] if lines else ""
    delimiter = (excel.group(1) if excel else "\t" if path.suffix.lower() == ".tsv" or "\t" in head else
                 ";" if ";" in head and "," not in head else ",")
    for n, line in enumerate(lines, 1):  # one row a line: a label or a path holds no line break
        if line.strip():
            yield n, [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter))]


def csv_label_rows(path: Path, image_columns: Sequence[str], label_columns: Sequence[str],
                   fix: str) -> Iterator[tuple[str, dict | None, str]]:
    """-> (where "file:line", {"image", "label"[, "split"]}, "") per row, or (where, None, why) per short row, as
    polymodal.data.jsonl.iter_json_rows yields JSON rows; a header without an image and a label column is an error
    ending with ``fix``. A "split" column works as JSON rows' "split" field (--split)."""
    from polymodal.data.jsonl import SplitTally

    rows = _rows(path)
    _, header = next(rows, (0, []))
    columns = [c.lower() for c in header]
    image = next((columns.index(c) for c in image_columns if c in columns), None)
    label = next((columns.index(c) for c in label_columns if c in columns), None)
    if image is None or label is None:
        raise PolymodalError(f"{path}: header has columns {header}; a CSV of labelled photos needs an image column "
                             f"({', '.join(image_columns)}) and a label column ({', '.join(label_columns)}); {fix}")
    split = columns.index("split") if "split" in columns else None
    splits = SplitTally(path) if split is not None else None
    for n, cells in rows:
        if len(cells) < len(header):
            yield f"{path}:{n}", None, f"row does not have the header's {len(header)} fields"
        elif splits is None or splits.keep(cells[split]):
            yield f"{path}:{n}", {"image": cells[image], "label": cells[label]}, ""
    if splits is not None:
        splits.finish(False, jq=False)


def csv_names(path: Path, what: str) -> list[str]:
    """The names (``what``: "label", "class") of a one-column CSV, below its header when the first cell names the
    column (label, class, ...). Several columns need that header, and only the names column is read: another one (a
    prompt per label) would be ignored, so it is refused."""
    # empty cells at a row's end are no column: Excel writes "cat;" for a sheet with a blank column beside the names
    rows = [(n, cells[:max(1, len(cells) - _trailing_blanks(cells))]) for n, cells in _rows(path)]
    whats = what + ("es" if what.endswith("s") else "s")  # "classes", not "classs"
    if not rows:
        raise PolymodalError(f"{path} holds no {whats}; write one {what} per line")
    header = [c.lower() for c in rows[0][1]]
    named = next((c for c in NAME_COLUMNS if c in header), None)
    if len(header) == 1:
        wide = next((n for n, cells in rows if len(cells) > 1), None)
        if wide is not None:  # cat, dog unquoted: two cells, and the second would be dropped
            raise PolymodalError(f"{path}:{wide} holds several cells in a one-column CSV; quote a {what} holding a "
                                 f"comma (\"cat, black\"), or write one {what} per line in a .txt file")
        return [cells[0] for _, cells in rows[1 if named else 0:] if not is_blank(cells[0])]
    if named is None:
        raise PolymodalError(f"{path} has {len(header)} columns and no header naming the {whats} "
                             f"({', '.join(NAME_COLUMNS)}); write a header, e.g. {what}, or one {what} per line")
    others = [c for c in rows[0][1] if c.lower() != named]
    raise PolymodalError(f"{path}: only the {named} column names {whats}, and its other columns ({', '.join(others)}) "
                         f"would be ignored (the prompts come from --template / --templates-file); keep the {named} "
                         "column alone")


def _trailing_blanks(cells: list[str]) -> int:
    return next((i for i, cell in enumerate(reversed(cells)) if cell), len(cells))
