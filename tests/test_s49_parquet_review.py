"""Parquet review (stop 49, helper s49/parquet): Hugging Face's one-caption-per-row layout, the photo repeated on
each row, is one photo per photo; a missing pyarrow is one error line."""

import io
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from polymodal import cli
from polymodal.data.pairs import read_pair_source
from polymodal.errors import PolymodalError
from test_s49_parquet import figures, retrieval_lines_beside_files

COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 30)]
WORDS = ["red", "green", "blue", "yellow"]


def _jpeg(rgb) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 40), rgb).save(out, "JPEG", quality=95)
    return out.getvalue()


def _per_row(path):
    """One caption per row, each row holding its photo again (as Hugging Face's Image feature stores it), row groups
    of 3 so a photo's rows span two of them; "same.jpg" names two different photos (two class folders' files)."""
    rows = [(c, w, f"{w}.jpg" if w != "yellow" else "same.jpg") for c, w in zip(COLOURS, WORDS)]
    rows[2] = (rows[2][0], rows[2][1], "same.jpg")
    image, caption = [], []
    for c, w, name in rows:
        for text in (f"a {w} square", f"something {w}"):
            image.append({"bytes": _jpeg(c), "path": name})
            caption.append(text)
    pq.write_table(pa.table({"image": image, "caption": caption}), path, row_group_size=3)
    return path


def test_a_photo_repeated_over_rows_is_one_photo(tmp_path, capsys):
    path = _per_row(tmp_path / "train-00000-of-00001.parquet")
    pairs = read_pair_source(path)
    assert len(pairs.images) == 4 and len(pairs.pairs) == 8  # it was 8 photos of one caption each
    assert [p.image for p in pairs.pairs] == [f"{path}#{r}" for r in (0, 0, 2, 2, 4, 4, 6, 6)]  # "same.jpg": 2 photos
    lines = retrieval_lines_beside_files(path, COLOURS, WORDS, capsys)
    assert figures(lines[0]) == figures(lines[1])  # copies of one photo tied: t2i R@1 was 0.0


def test_without_pyarrow_reading_parquet_is_one_error_line(tmp_path, monkeypatch, capsys):
    path = _per_row(tmp_path / "data.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # pyarrow not installed at all (not only pyarrow.parquet)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(PolymodalError, match=r"reading Parquet needs pyarrow: pip install 'polymodal\[parquet\]'"):
        read_pair_source(path)
    assert cli.main(["eval", "retrieval", "--pairs", str(path), "--model", "lite"]) == 2
    assert "reading Parquet needs pyarrow" in capsys.readouterr().err
