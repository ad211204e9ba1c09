"""Rows of a JSONL file (one object per line, read as a stream) or of a JSON array of objects."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


def existing_file(path: Path, what: str, fix: str) -> Path:
    """``path``, or one error: "{what} not found", or that it is a folder (a photo folder passed where its list of
    rows goes is a common slip), each ending with ``fix``."""
    if path.is_dir():
        raise PolymodalError(f"{path} is a folder, not a {what}; {fix}")
    if not path.is_file():
        raise PolymodalError(f"{what} not found: {path}; {fix}")
    return path


UTF16_FIX = "UTF-16 (or binary), not UTF-8 text; save it as UTF-8 (in PowerShell: Out-File -Encoding utf8)"


def utf16_or_binary(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-16 (PowerShell 5's `>` writes it) or binary: read as UTF-8, ASCII
    UTF-16 without a BOM decodes without an error into letters between NULs."""
    return head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head


@contextmanager
def utf8_text(path: Path, **open_args):
    """The file opened as UTF-8 text (a BOM is fine), or one error naming the line that is not UTF-8: a Latin-1 or
    UTF-16 export would otherwise be read as garbled words, or as rows that make no sense."""
    with path.open("rb") as raw:
        if utf16_or_binary(raw.read(4096)):
            raise PolymodalError(f"{path} is {UTF16_FIX}")
    try:
        with path.open(encoding="utf-8-sig", **open_args) as f:
            yield f
    except UnicodeDecodeError as exc:
        raise PolymodalError(f"{path}:{_first_undecodable_line(path)} is not UTF-8 text ({exc.reason}: "
                             f"{exc.object[exc.start:exc.end]!r}); save the file as UTF-8") from None


def not_unicode(value: Any, key: str, path: bool = False) -> str | None:
    """Why ``value`` (a JSON row's ``key``: text, or a list or object holding texts) is not valid Unicode, or None.
    JSON can escape half of a surrogate pair ("\\ud83d", an emoji cut in two by whatever wrote the file), which is
    no character: no tokenizer takes it, and a path holding one cannot be looked up. ``path``: a file name, where
    \\udc80-\\udcff are the bytes of a name that is not UTF-8 as Python reads it (json.dumps of os.listdir's
    "caf\\udce9.jpg"), which open() finds."""
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for text in values:
        if isinstance(text, (dict, list)):
            why = not_unicode(text, key, path)
            if why:
                return why
        elif isinstance(text, str):
            try:
                text.encode("utf-8", "surrogateescape" if path else "strict")
            except UnicodeEncodeError as exc:
                return (f'"{key}" is not valid Unicode (\\u{ord(text[exc.start]):04x} at character {exc.start + 1}: '
                        "half of a surrogate pair, an emoji cut in two?); fix that text")
    return None


def _first_undecodable_line(path: Path) -> int | str:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return "?"


def iter_json_rows(path: Path, fix: str, texts: Sequence[str] = (), paths: Sequence[str] = (),
                   document_rows: Callable[[Path, dict], list | None] | None = None
                   ) -> Iterator[tuple[str, dict | None, str]]:
    """-> (where "file:line", row, "") per usable object, or (where, None, why) per unusable line. A file that
    starts as a JSON array but does not parse is an error whose message ends with ``fix``. A row whose ``texts``
    keys hold text that is not valid Unicode is unusable too, or whose ``paths`` keys hold no file name (see
    not_unicode). A file that is one JSON object (pretty-printed, or one line with an "images" list) is turned into
    rows by ``document_rows`` (None: not a kind it knows; a PolymodalError in its list: a row it could not make),
    else it is an error ending with ``fix``."""
    splits = SplitTally(path)
    with utf8_text(path) as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        f.seek(0)
        document = _whole_object(path, f, fix) if head == "{" else None
        if document is not None:  # e.g. COCO's captions_val2017.json: "where" is the row's number in the file
            rows = document_rows(path, document) if document_rows else None
            if rows is None:
                raise PolymodalError(f"{path} is one JSON object, not rows of objects; {fix}")
            items = enumerate(rows, 1)
        elif head == "[":  # a JSON array of row objects is accepted too
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
            if isinstance(item, PolymodalError):  # a row document_rows could not make, and why
                yield where, None, str(item)
                continue
            if not isinstance(item, dict):
                yield where, None, "not a JSON object"
                continue
            if not splits.keep(item.get("split") if isinstance(item.get("split"), str) else None):
                continue  # another split: left out, neither read nor skipped
            broken = next((why for key in (*texts, *paths)
                           if (why := not_unicode(item.get(key), key, path=key in paths))), None)
            if broken:  # no tokenizer takes it: it ended a training run with a traceback, an evaluation with no line
                yield where, None, broken
                continue
            yield where, item, ""
    splits.finish(None if document is not None else head == "[")


class SplitTally:
    """A data file's rows by their "split" name, as they are read: which to keep under --split (only_splits), and
    at the end the warning or error that the splits found call for (see _warn_of_mixed_splits, _check_split)."""

    def __init__(self, path: Path) -> None:
        self.path, self.splits, self.unmarked = path, Counter(), 0  # unmarked: rows with no split name
        self.wanted = _SPLITS[-1][0] if _SPLITS else None  # casefolded split names, or None: every row

    def keep(self, split: str | None) -> bool:
        """Count a row of this split (None or "": none named) -> whether it is read."""
        if split:
            self.splits[split] += 1
        else:
            self.unmarked += 1
        return self.wanted is None or str(split or "").casefold() in self.wanted

    def finish(self, array: bool | None, jq: bool = True) -> None:
        """``array``: the file was a JSON array (True), JSON Lines (False) or one JSON document (None); ``jq``:
        False for a file that is not JSON (a CSV's split column, Flickr8k's split lists), whose hints name no jq."""
        if self.wanted is None:
            _warn_of_mixed_splits(self.path, self.splits, array, jq)
        else:
            _check_split(self.path, self.splits, self.wanted, self.unmarked)


_DOCUMENT_LISTS = ("images", "questions", "annotations")  # a one-line object holding one of these is a document


def _whole_object(path: Path, f, fix: str) -> Any:
    """The file (which starts with "{") as one JSON document when it is one: its first line is a lone "{" (pretty-
    printed) or an object with an "images" list (COCO's and Karpathy's caption files are one line; VQA v2's files,
    with "questions" or "annotations"); else None, and
    it is read as JSON Lines, a row at a time (a JSONL file whose first row is broken stays a file of rows). The
    file is left at its start either way."""
    try:
        first = f.readline()
        if first.strip() != "{":
            try:
                single = json.loads(first)
            except json.JSONDecodeError:
                return None
            if not (isinstance(single, dict) and any(isinstance(single.get(k), list) for k in _DOCUMENT_LISTS)):
                return None
            rest = f.read(1 << 16)
            while rest.isspace():
                rest = f.read(1 << 16)
            if not rest:  # the file was that one line: parsed once (COCO's train2017 file: 100 MB, 1.3 s, 0.4 GB)
                return single
        f.seek(0)
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise PolymodalError(f"{path} is not valid JSON ({exc}); {fix}") from exc
    finally:
        f.seek(0)


def _check_split(path: Path, splits: Counter, wanted: frozenset, unmarked: int) -> None:
    _SPLITS[-1][1] += 1  # a file with split names (JSON, or CSV with a split column) was read under --split
    flag, named = _SPLITS[-1][2], _SPLITS[-1][3]
    kept = sum(n for name, n in splits.items() if name.casefold() in wanted)
    no_field = f'{unmarked:,} {"row" if unmarked == 1 else "rows"} with no "split" field'
    if not kept:
        if not splits:
            raise PolymodalError(f'{path} has no rows of split {named!r}: its rows carry no "split" field; leave '
                                 f"{flag} out to read every row")
        carried = "its rows carry " + ", ".join(f"{name} {n:,}" for name, n in splits.most_common())
        raise PolymodalError(f"{path} has no rows of split {named!r}: {carried}{', and ' + no_field if unmarked else ''}"
                             f"; pass one of those to {flag} (several joined by commas), or leave it out to read every "
                             "row")
    if unmarked:  # likely rows the user meant to keep: a warning, where other splits left out are only INFO
        log.warning("%s: left out %s (%s keeps only rows marked %r); give them one, or leave %s out", path,
                    no_field, flag, named, flag)
    if len(splits) > 1:
        log.info("%s: read the %s rows of split %r, left out %s", path, f"{kept:,}", named,
                 ", ".join(f"{name} {n:,}" for name, n in splits.most_common() if name.casefold() not in wanted))


HELD_OUT_SPLITS = ("test", "val", "dev", "eval")  # contained in "validation", "minival", "test-dev"
TRAINING_SPLITS = ("train", "restval")  # Karpathy's COCO file trains on "restval" too: it holds "val", yet trains


def _is_held_out(name: str) -> bool:
    low = name.casefold()
    return (not any(word in low for word in TRAINING_SPLITS)
            and any(word in low for word in HELD_OUT_SPLITS + ("valid",)))


def _held_out(splits: Counter) -> str:
    """The split to suggest keeping for an evaluation: one named like a held-out split ("dev", "valid", "Test",
    "test-dev", "minival"), else the least common one (training splits are usually the largest)."""
    names = [name for name, _ in splits.most_common()]
    for name in names:
        if _is_held_out(name):
            return name
    return names[-1]


def _training_splits(splits: Counter) -> list[str]:
    """The splits to suggest training on: those not named like a held-out split (Karpathy's "train" and
    "restval"), else the most common one."""
    names = [name for name, _ in splits.most_common()]
    return [name for name in names if not _is_held_out(name)] or names[:1]


def _warn_of_mixed_splits(path: Path, splits: Counter, array: bool | None, jq: bool = True) -> None:
    """Rows marked with several splits ("train", "dev") are all read: nothing filters on the field, and scoring a
    model on its training split alongside the rest is a slip worth one line. The filter it suggests keeps a
    held-out split and writes a new file beside this one (image paths stay relative to that folder). Outside an
    evaluation (`train`, `export --val-pairs`), which has no --split and so trained on a Karpathy file's test photos
    too, it also says how to keep the training splits (a Karpathy file in its own format)."""
    if len(splits) <= 1:
        return
    counts = ", ".join(f"{name} {n:,}" for name, n in splits.most_common())
    one = _held_out(splits)
    select = f"{'.[] | ' if array else ''}select(.split == \"{one}\")"
    filtered = (f", or filter the file, e.g. jq -c '{select}' {path} > {path.with_name(f'{path.stem}.{one}.jsonl')}"
                if array is not None and jq else "")
    training = ""
    if not _TALLIES:  # not inside an `eval` (counting_skipped): a training run, or an export, which has no --split
        keep = _training_splits(splits)
        test = " or ".join(f'.split == "{name}"' for name in keep)
        train, ext = ((f".images |= map(select({test}))", "json") if array is None  # Karpathy's {"images": [...]}
                      else (f"{'.[] | ' if array else ''}select({test})", "jsonl"))
        out = path.with_name(f"{path.stem}.{'+'.join(keep)}.{ext}")
        export = (f"filter the file, e.g. jq -c '{train}' {path} > {out}" if jq
                  else "keep the rows of the splits to export with in a file of their own")
        training = (f"; to train on {' and '.join(keep)} only, pass `train ... --split {','.join(keep)}` (and "
                    f"this file as --val-pairs, or --val-qa, with `--val-split {one}` for validation rows from it); "
                    f"`export` reads every split: {export}")
    log.warning("%s: rows carry %d split values (%s) and all of them are read; to use one, pass `eval ... "
                "--split %s`%s%s", path, len(splits), counts, one, filtered, training)

_TALLIES: list[list[int]] = []  # open counting_skipped() blocks
_SPLITS: list[list] = []  # open only_splits blocks: [casefolded names, JSON files read, flag, split as given]


@contextmanager
def counting_skipped(split: str | None = None) -> Iterator[list[int]]:
    """Counts the rows every data file read inside the block skipped, as [n]: an evaluation puts the count in its
    JSON line, where a figure computed on part of the data would otherwise read as computed on all of it. With
    ``split`` (`eval --split`), see only_splits."""
    tally = [0]
    _TALLIES.append(tally)
    try:
        with only_splits(split):
            yield tally
    finally:
        _TALLIES[:] = [t for t in _TALLIES if t is not tally]  # by identity: two tallies may hold equal counts


def split_names(split: str | None) -> frozenset[str]:
    """--split's comma-separated names as compared with a row's "split" field: in any case, spaces dropped."""
    return frozenset(n.strip().casefold() for n in str(split or "").split(",") if n.strip())


@contextmanager
def only_splits(split: str | None, flag: str = "--split") -> Iterator[None]:
    """Inside the block, JSON rows whose "split" field is not one of ``split``'s comma-separated names (in any case)
    are left out (`eval --split test`, `train --split train,restval`); a JSON file with none of them is an error,
    and so is a block that read no JSON file (nothing to filter). None or "": every row. ``flag`` names the option
    in messages (--split, --val-split)."""
    if not split:
        yield
        return
    names = split_names(split)
    if not names:
        raise PolymodalError(f"{flag} {split!r} names no split; pass a name such as test, or several joined by commas")
    _SPLITS.append(entry := [names, 0, flag, str(split)])
    try:
        yield
        if not entry[1]:
            raise PolymodalError(f"{flag} {split} filters JSON/JSONL rows on their \"split\" field (and CSV rows "
                                 f"on a split column), and none of the data files given has one; filter the data "
                                 f"yourself, or leave {flag} out")
    finally:
        _SPLITS[:] = [e for e in _SPLITS if e is not entry]


def report_skipped(source, skipped: list, usable: int, what: str, fix: str, noun: str = "unusable row") -> None:
    """After reading a data file: with no usable row, one error (what is missing, how many rows were skipped and
    why the first was); otherwise a warning naming the first skipped row, and every one of them at INFO (-v)."""
    for tally in _TALLIES:
        tally[0] += len(skipped)
    first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    if not usable:  # one error line; a warning before it would only repeat it
        raise PolymodalError(f"{source} has no usable {what}; {len(skipped)} skipped{first}; {fix}")
    if skipped:
        more = "; -v lists them all" if len(skipped) > 1 else ""
        log.warning("%s: skipped %s %s%s)", source, f"{len(skipped):,}", noun if len(skipped) == 1 else
                    noun.replace("row", "rows").replace("file", "files"), first[:-1] + more)
        for where, why in skipped:
            log.info("skipped %s: %s", where, why)


def data_file_image(folder: Path, image) -> Path:
    """A data file's image path (relative to ``folder``, the file's) resolved. A relative path written with Windows
    backslashes (`images\\cat.jpg`: a CSV or JSONL made on Windows) is read with slashes when only that file exists:
    on Linux and macOS a backslash is part of a file name, so every row of such a file was "not found"."""
    text = str(image)
    path = (folder / Path(text).expanduser()).resolve()
    if "\\" in text and os.sep == "/" and not path.is_file():
        posix = (folder / Path(text.replace("\\", "/")).expanduser()).resolve()
        if posix.is_file():
            return posix
    return path


def missing_image(image, folder: Path) -> str:
    """Why a data file's row is skipped when its image is not there: the path that was tried, since a relative
    path is read from the data file's folder, not from where the command runs."""
    given = Path(str(image)).expanduser()
    if given.is_absolute():
        return f"image file not found: {image}"
    hint = ("; this one exists relative to the working directory: make it relative to the data file, or absolute"
            if given.is_file() else "")
    return f"image file not found: {image}, read as {folder / given} (paths are relative to the data file{hint})"
