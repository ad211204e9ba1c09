"""Stop 38's review of reading users' data: tar shards with a repeated key, a BOM or non-text captions, one summary
instead of a warning per skipped sample, and repeated JSONL rows named by their line."""

from __future__ import annotations

import io
import json
import logging
import tarfile

from PIL import Image

from polymodal.data.pairs import read_pair_source
from polymodal.data.shards import image_bytes


def _jpg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, "JPEG")
    return buf.getvalue()


def _shard(path, members) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_a_repeated_key_in_a_shard_is_skipped_not_paired_with_another_photo(tmp_path):
    red, green, blue = _jpg("red"), _jpg("green"), _jpg("blue")
    _shard(tmp_path / "s.tar", [("000.jpg", red), ("000.txt", b"a red square"), ("001.jpg", green),
                                ("001.txt", b"a green square"), ("000.jpg", blue), ("000.txt", b"a blue square")])
    pairs = read_pair_source(tmp_path / "s.tar")
    got = {p.caption: image_bytes(p.image) for p in pairs.pairs}
    assert got == {"a red square": red, "a green square": green}  # the red caption read the blue photo's bytes
    assert len(pairs.skipped) == 1 and "repeats an earlier sample's" in pairs.skipped[0][1]


def test_shard_captions_are_read_as_caption_files_are(tmp_path):
    _shard(tmp_path / "s.tar", [("a.jpg", _jpg("red")), ("a.txt", "\ufeffa red\t\tsquare\n".encode()),
                                ("b.jpg", _jpg("blue")), ("b.json", b'\xef\xbb\xbf{"captions": [null, 5, "a blue one"]}')])
    pairs = read_pair_source(tmp_path / "s.tar")
    assert sorted(p.caption for p in pairs.pairs) == ["a blue one", "a red square"]  # no BOM, tabs, "None" or "5"


def test_skipped_shard_samples_are_summarised_once(tmp_path, caplog):
    members = [(f"{i:03d}.jpg", _jpg("red")) for i in range(20)] + [("100.jpg", _jpg("blue")), ("100.txt", b"blue")]
    _shard(tmp_path / "s.tar", members)  # 20 samples without a caption
    with caplog.at_level(logging.WARNING):
        pairs = read_pair_source(tmp_path / "s.tar")
    assert len(pairs.skipped) == 20 and len(pairs.pairs) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1, caplog.text


def test_a_repeated_row_is_named_by_its_file_and_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "b.jpg")
    rows = [{"image": "a.jpg", "caption": "a dog"}, {"image": "a.jpg", "caption": "a dog"},
            {"image": "b.jpg", "caption": ""}, {"image": "b.jpg", "caption": "red"}]
    (tmp_path / "p.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    pairs = read_pair_source(tmp_path / "p.jsonl")
    where = f"{tmp_path / 'p.jsonl'}"
    assert [w for w, _ in pairs.skipped] == [f"{where}:2", f"{where}:3"]
    assert f"repeats the caption 'a dog' of {where}:1" in pairs.skipped[0][1]
