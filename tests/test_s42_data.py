"""Stop 42 review of reading users' data: rows and photos that ended runs instead of being left out."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from polymodal.data.images import load_image
from polymodal.data.pairs import read_pair_source
from polymodal.data.shards import write_shards
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa

HALF_EMOJI = '"smile \\ud83d"'  # JSON's escape of half a surrogate pair: an emoji cut in two by a scraper


def _photo(path, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_half_surrogate_caption_is_a_skipped_row_naming_its_line(tmp_path):
    for i in range(2):
        _photo(tmp_path / f"p{i}.png", i)
    (tmp_path / "pairs.jsonl").write_text('{"image": "p0.png", "caption": "a fine caption"}\n'
                                          f'{{"image": "p1.png", "caption": {HALF_EMOJI}}}\n'
                                          f'{{"image": "p1.png", "caption": "ok", "negatives": [{HALF_EMOJI}]}}\n')
    ps = read_pair_source(tmp_path / "pairs.jsonl")
    assert ps.captions == ["a fine caption"]
    assert [(where.rsplit(":", 1)[1], "not valid Unicode" in why) for where, why in ps.skipped] == \
        [("2", True), ("3", True)]
    (tmp_path / "qa.jsonl").write_text('{"image": "p0.png", "question": "is it red?", "answer": "no"}\n'
                                       f'{{"image": "p1.png", "question": {HALF_EMOJI}, "answer": "yes"}}\n')
    rows = read_qa(tmp_path / "qa.jsonl")
    assert [r.question for r in rows] == ["is it red?"]


def test_half_surrogate_caption_in_a_shard_json_is_a_skipped_sample(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for key, meta in (("000", '{"caption": "good"}'), ("001", f'{{"captions": [{HALF_EMOJI}]}}')):
            for name, data in ((f"{key}.png", png.getvalue()), (f"{key}.json", meta.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    ps = read_pair_source(tmp_path / "s.tar")
    assert ps.captions == ["good"] and len(ps.skipped) == 1 and "not valid Unicode" in ps.skipped[0][1]


def test_extreme_aspect_photo_is_refused_naming_the_file(tmp_path):
    strip = _photo(tmp_path / "banner.png", 0, size=(2000, 1))
    with pytest.raises(PolymodalError, match="banner.png is 2000x1 pixels"):
        load_image(strip)


def test_training_leaves_out_a_strip_photo_and_a_half_surrogate_caption(tmp_path, capsys):
    # before: the strip ended the run with "image is 2000x1 pixels" (no file named), the caption with a traceback
    from polymodal import cli

    rows = [{"image": str(_photo(tmp_path / f"p{i}.png", i)), "caption": f"photo number {i}"} for i in range(6)]
    rows.append({"image": str(_photo(tmp_path / "banner.png", 9, size=(2000, 1))), "caption": "a banner"})
    lines = [json.dumps(r) for r in rows] + [f'{{"image": "p0.png", "caption": {HALF_EMOJI}}}']
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    code = cli.main(["train", "contrastive", "--pairs", str(tmp_path / "pairs.jsonl"), "--val-fraction", "0.3",
                     "--model", "lite", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert json.loads(out.out.strip().splitlines()[-1])["best"]["epoch"] == 1


def test_write_shards_keeps_a_latin1_file_name(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9")  # a Latin-1 name on a UTF-8 file system: a surrogate escape in Python
    _photo(folder / f"{name}.png", 0)
    (folder / f"{name}.txt").write_text("a cafe\n")
    shards = write_shards(read_pair_source(folder), tmp_path / "shards")
    assert read_pair_source(tmp_path / "shards").captions == ["a cafe"]
    with tarfile.open(shards[0]) as tf:
        assert json.loads(tf.extractfile("000000000.json").read())["source"] == "caf\\udce9.png"
