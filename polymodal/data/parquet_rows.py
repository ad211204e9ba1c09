"""Parquet files of rows, as Hugging Face datasets (the Image feature: a struct of "bytes" and "path") and
img2dataset's parquet output ("jpg" bytes beside "txt") store them, read where they are: `--pairs data.parquet`,
`--qa data.parquet`.

An image inside the file is named "<file>#<row>", as a tar shard's member is "<shard>#<member>", so the feature
cache, training and evaluation take it as they take a shard's (a photo repeated over rows, one caption or question
each, is named by its first row); its bytes are read by row group, the last one kept per process (feature caching
reads the rows in order). A path column instead of bytes names files relative to the parquet file, as a CSV's does.
A "split" column works as a JSON row's "split" (--split keeps some rows). Needs pyarrow (`pip install
'polymodal[parquet]'`), imported only here.
"""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from polymodal.errors import PolymodalError

IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "filepath", "image_path", "file", "path")
CAPTION_COLUMNS = ("caption", "captions", "sentences", "text", "txt", "title")
BATCH_ROWS = 1024  # captions read at a time: an image column is never read while listing the rows

_OPEN: dict[tuple[int, str], "_Opened"] = {}  # per process: a forked DataLoader worker opens its own
_LOCK = threading.Lock()


def is_parquet(name: Any) -> bool:
    return str(name).lower().endswith(".parquet")


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PolymodalError("reading Parquet needs pyarrow: pip install 'polymodal[parquet]' (or pip install "
                             "pyarrow), or convert the file to JSONL or tar shards") from None
    return pq


def _open(path: Path):
    pq = _pq()  # first: without pyarrow, `import pyarrow` here was a traceback, not the line saying what to install
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PolymodalError(f"{path} is not a readable Parquet file ({exc})") from exc


def image_column(path: Path, schema) -> tuple[str | None, str]:
    """-> (the image column or None, how it holds the image: "bytes", "struct" or "path")."""
    import pyarrow as pa

    names = {n.lower(): n for n in schema.names}
    image = next((names[c] for c in IMAGE_COLUMNS if c in names), None)
    if image is None:
        return None, ""
    kind = schema.field(image).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return image, "bytes"
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:  # Hugging Face's Image feature
        return image, "struct"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return image, "path"
    raise PolymodalError(f"{path}: the column {image!r} holds {kind}, not an image's bytes or its path")


def captions_of(value: Any) -> Any:
    """A caption cell: text, a list of texts, or COCO-style {"raw": text} sentences (one, or a list) -> text or a list
    of texts as the other readers take them (anything else is left for them to refuse)."""
    if isinstance(value, dict) and "raw" in value:
        return value["raw"]
    if isinstance(value, list):
        return [v["raw"] if isinstance(v, dict) and "raw" in v else v for v in value]
    return value


def read_rows(path: Path, needs: Sequence[str] = (), fix: str = "") -> tuple[bool, Iterator[tuple[str, dict]]]:
    """-> (whether images are inside the file, its rows as ("file:row N", {column: value} with "image" the image's
    "<file>#<row>" or its path as written)), the image bytes not read. ``needs``: column names of which the file
    must have one besides the image column (else one error naming them, ending with ``fix``)."""
    from polymodal.data.jsonl import SplitTally

    f = _open(path)
    schema = f.schema_arrow
    image, kind = image_column(path, schema)
    urls = next((n for n in schema.names if n.lower() in ("url", "image_url")), None)
    if image is None and urls is not None:  # LAION's and Conceptual Captions' lists: links, no photos
        text = next((n for n in schema.names if n.lower() in CAPTION_COLUMNS), None)
        caption = f" --caption_col {text}" if text else ""
        raise PolymodalError(f"{path} lists photo links ({urls!r}), not the photos; download them first where the "
                             f"network allows, e.g. `img2dataset --url_list {path.name} --input_format parquet "
                             f"--url_col {urls}{caption} --output_format webdataset --output_folder shards`, then "
                             "pass that folder of tar shards")
    if image is None or (needs and not {n.lower() for n in schema.names} & set(needs)):
        raise PolymodalError(f"{path}: its columns are {schema.names}; it needs an image column "
                             f"({', '.join(IMAGE_COLUMNS)}){' and one of ' + ', '.join(needs) if needs else ''}"
                             f"{'; ' + fix if fix else ''}")
    inside = kind != "path"
    wanted = [n for n in schema.names if n != image or not inside]  # never the images' bytes
    same = _repeated_photos(f, image) if kind == "struct" else {}
    split = next((n for n in schema.names if n.lower() == "split"), None)
    splits = SplitTally(path) if split else None  # as a CSV's split column

    def rows() -> Iterator[tuple[str, dict]]:
        n = 0
        for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                row = {k.lower(): v[i] for k, v in cols.items()}
                if inside:
                    row["image"] = f"{path}#{same.get(n, n)}"
                elif image.lower() != "image":
                    row["image"] = row.pop(image.lower())
                n += 1
                if splits is None or splits.keep(str(row.get("split") or "").strip()):
                    yield f"{path}:row {n - 1}", row
        if splits is not None:
            splits.finish(False, jq=False)

    return inside, rows()


def _repeated_photos(f, image: str) -> dict[int, int]:
    """{row: the first row of the same photo} for Hugging Face rows that repeat a photo (one caption or question per
    row): each row's "<file>#<row>" was a photo of its own, so retrieval scored 5 copies of one photo as ties (t2i
    R@1 0.0) and training took a copy as another photo's negative. Rows are one photo when their Image names the
    same file and holds the same bytes (a name alone is no proof: two class folders may each hold "0001.jpg");
    only rows whose name repeats are read."""
    import hashlib

    if f.schema_arrow.field(image).type.get_field_index("path") < 0:
        return {}
    rows_of: dict[str, list[int]] = {}
    n = 0
    for batch in f.iter_batches(batch_size=BATCH_ROWS * 16, columns=[f"{image}.path"]):
        for name in batch.column(0).field(0).to_pylist():
            if name:
                rows_of.setdefault(name, []).append(n)
            n += 1
    wanted = sorted(r for rows in rows_of.values() if len(rows) > 1 for r in rows)
    if not wanted:
        return {}
    digest: dict[int, bytes | None] = {}
    meta, start = f.metadata, 0
    for g in range(meta.num_row_groups):  # a row group's images at a time, as reading them for features does
        end = start + meta.row_group(g).num_rows
        lo, hi = bisect.bisect_left(wanted, start), bisect.bisect_left(wanted, end)
        if lo < hi:
            cells = f.read_row_group(g, columns=[image]).column(0).combine_chunks().field("bytes")
            for r in wanted[lo:hi]:
                data = cells[r - start].as_py()
                digest[r] = None if data is None else hashlib.blake2b(data, digest_size=16).digest()
        start = end
    same: dict[int, int] = {}
    for rows in rows_of.values():
        first: dict = {}
        for r in rows if len(rows) > 1 else ():
            same[r] = first.setdefault(digest[r], r)  # no bytes (a path to a file): the name is the file
    return {r: kept for r, kept in same.items() if kept != r}


def class_names(path: Path) -> dict[str, list[str]]:
    """{column (lower case): its class names} of the ClassLabel columns Hugging Face datasets records in the file's
    schema metadata, so that a label stored as 3 reads as "cat"; {} when it records none."""
    import json

    meta = (_open(path).schema_arrow.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
        return {k.lower(): list(v["names"]) for k, v in features.items()
                if isinstance(v, dict) and v.get("_type") == "ClassLabel" and isinstance(v.get("names"), list)}
    except (ValueError, KeyError, TypeError):  # metadata of another shape: labels read as stored
        return {}


class _Opened:
    """One process's open file: row group starts, and the image column of the row group read last."""

    def __init__(self, path: Path, identity: tuple):
        self.file, self.identity = _open(path), identity
        self.image = image_column(path, self.file.schema_arrow)[0]
        meta = self.file.metadata
        self.starts = [0]
        for g in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
        self.group, self.values = -1, None

    def cell(self, row: int) -> Any:
        if not 0 <= row < self.starts[-1]:
            raise PolymodalError(f"has no row {row} (it holds {self.starts[-1]}); the file changed since it was listed")
        group = bisect.bisect_right(self.starts, row) - 1
        if group != self.group:
            self.values = self.file.read_row_group(group, columns=[self.image]).column(0)
            self.group = group
        return self.values[row - self.starts[group]].as_py()


def read_image_bytes(path: str | Path, member: str) -> bytes:
    """The encoded image of row ``member`` (its number) of a Parquet file."""
    from polymodal.data.shards import _file_identity

    key, identity = (os.getpid(), str(path)), _file_identity(path)
    if identity is None:
        raise PolymodalError(f"Parquet file not found: {path}")
    try:
        row = int(member)
    except ValueError:
        raise PolymodalError(f"{path}#{member}: not a row number of the Parquet file") from None
    with _LOCK:
        opened = _OPEN.get(key)
        if opened is None or opened.identity != identity:  # rewritten since: read anew
            _OPEN.clear()  # one file at a time: a row group's images can be hundreds of MB
            opened = _OPEN[key] = _Opened(Path(path), identity)
        try:
            cell = opened.cell(row)
        except PolymodalError as exc:
            raise PolymodalError(f"{path}: {exc}") from None
    if isinstance(cell, dict):  # Hugging Face's Image feature: the bytes, or a path to them
        data, where = cell.get("bytes"), cell.get("path")
        if data is None and where:
            file = Path(path).parent / where
            if not file.is_file():
                raise PolymodalError(f"{path}#{row}: no image bytes, and its path {where} is not found beside the file")
            return file.read_bytes()
        cell = data
    if not cell:
        raise PolymodalError(f"{path}#{row}: the row holds no image")
    return bytes(cell)
