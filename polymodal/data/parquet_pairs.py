"""Parquet files of image-caption rows, as Hugging Face datasets (the Image feature: a struct of "bytes" and "path")
and img2dataset's parquet output ("jpg" bytes beside "txt") store them, read where they are: `--pairs data.parquet`.

An image inside the file is named "<file>#<row>", as a tar shard's member is "<shard>#<member>", so the feature
cache, training and evaluation take it as they take a shard's; its bytes are read by row group, the last one kept
per process (feature caching reads the rows in order). A path column instead of bytes names files relative to the
parquet file, as a CSV's does. Needs pyarrow (`pip install 'polymodal[parquet]'`), imported only here.
"""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path
from typing import Any, Iterator

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
    import pyarrow as pa

    try:
        return _pq().ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise PolymodalError(f"{path} is not a readable Parquet file ({exc})") from exc


def columns_of(path: Path, schema) -> tuple[str, str, str]:
    """-> (image column, how it holds the image: "bytes", "struct" or "path", caption column)."""
    import pyarrow as pa

    names = {n.lower(): n for n in schema.names}
    image = next((names[c] for c in IMAGE_COLUMNS if c in names), None)
    caption = next((names[c] for c in CAPTION_COLUMNS if c in names), None)
    if image is None or caption is None:
        raise PolymodalError(f"{path}: its columns are {schema.names}; it needs an image column "
                             f"({', '.join(IMAGE_COLUMNS)}) and a caption column ({', '.join(CAPTION_COLUMNS)})")
    kind = schema.field(image).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return image, "bytes", caption
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:  # Hugging Face's Image feature
        return image, "struct", caption
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return image, "path", caption
    raise PolymodalError(f"{path}: the column {image!r} holds {kind}, not an image's bytes or its path")


def captions_of(value: Any) -> Any:
    """A caption cell: text, a list of texts, or COCO-style {"raw": text} sentences (one, or a list) -> text or a list
    of texts as the other readers take them (anything else is left for them to refuse)."""
    if isinstance(value, dict) and "raw" in value:
        return value["raw"]
    if isinstance(value, list):
        return [v["raw"] if isinstance(v, dict) and "raw" in v else v for v in value]
    return value


def rows_of(path: Path) -> tuple[str, bool, Iterator[tuple[int, Any, Any, Any]]]:
    """-> (how the image column holds images, whether there is a "split" column, the rows: (row number, the image
    cell of a "path" column else None, the caption cell, the split or None)). The image bytes are not read."""
    f = _open(path)
    image, kind, caption = columns_of(path, f.schema_arrow)
    split = next((n for n in f.schema_arrow.names if n.lower() == "split"), None)
    wanted = [caption] + ([image] if kind == "path" else []) + ([split] if split else [])

    def rows() -> Iterator[tuple[int, Any, Any, Any]]:
        row = 0
        for batch in f.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            cols = batch.to_pydict()
            for i in range(batch.num_rows):
                yield (row, cols[image][i] if kind == "path" else None, captions_of(cols[caption][i]),
                       cols[split][i] if split else None)
                row += 1

    return kind, split is not None, rows()


class _Opened:
    """One process's open file: row group starts, and the image column of the row group read last."""

    def __init__(self, path: Path, identity: tuple):
        self.file, self.identity = _open(path), identity
        self.image, self.kind, _ = columns_of(path, self.file.schema_arrow)
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
