"""Image-caption pair sources, splitting, tar shards and augmentation."""

import csv
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from polymodal.data.augment import Augment, views
from polymodal.data.images import ImageTransform
from polymodal.data.pairs import Pair, PairSet, open_pair_image, read_pair_source, split_by_image
from polymodal.data.shards import expand_braces, expand_shards, iter_samples, write_shards
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import read_pairs

# image name -> captions (1 to 3 per image); one JPEG among PNGs
CAPTIONS = {
    "img0.png": ["a red square", "a crimson block"],
    "img1.png": ["a green field"],
    "img2.jpg": ["a blue sky", "clear weather", "the sky at noon"],
    "img3.png": ["a dark room"],
    "img4.png": ["noise, with a comma", "static"],
    "img5.png": ["a bright wall"],
}
TRANSFORM = ImageTransform(resize=20, crop=16)


def _write_image(path: Path, seed: int, size=(40, 30)) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _pixels(image) -> np.ndarray:
    return np.asarray(open_pair_image(image) if not isinstance(image, Image.Image) else image.convert("RGB"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder with images, same-named .txt captions, pairs.jsonl, pairs.csv, pairs.tsv (open_clip style)."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for seed, (name, captions) in enumerate(CAPTIONS.items()):
        _write_image(root / name, seed)
        (root / name).with_suffix(".txt").write_text("\n".join(captions) + "\n\n", encoding="utf-8")
        rows += [(name, c) for c in captions]
    with (root / "pairs.jsonl").open("w") as f:
        for name, c in rows:
            f.write(json.dumps({"image": name, "caption": c, "split": "dev"}) + "\n")
    with (root / "pairs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    with (root / "pairs.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        w.writerows([(str(root / name), c) for name, c in rows])  # absolute paths, as open_clip CSVs often have
    return root


def _grouped(ps: PairSet) -> list[list[str]]:
    return [ps.captions_of(i) for i in range(len(ps.images))]


# ---------------------------------------------------------------------------------------------- sources


def test_every_format_reads_the_same_pairs(data, tmp_path):
    expected = [(str((data / n).resolve()), c) for n, cs in CAPTIONS.items() for c in cs]
    for source in ("pairs.jsonl", "pairs.csv", "pairs.tsv", ""):
        ps = read_pair_source(data / source if source else data)
        assert [(str(p.image), p.caption) for p in ps.pairs] == expected, source
        assert [str(i) for i in ps.images] == [str((data / n).resolve()) for n in CAPTIONS]
        assert ps.caption_image.tolist() == [i for i, cs in enumerate(CAPTIONS.values()) for _ in cs]
        assert ps.skipped == []
    # a "text" caption column is accepted too
    with (tmp_path / "t.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "text")] + [(data / n, cs[0]) for n, cs in CAPTIONS.items()])
    assert read_pair_source(tmp_path / "t.csv").captions == [cs[0] for cs in CAPTIONS.values()]

    # tar shards, read back as a file, folder, glob, brace pattern or list: same captions per image, same pixels
    shards = write_shards(read_pair_source(data / "pairs.jsonl"), tmp_path / "shards", samples_per_shard=4)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert not list((tmp_path / "shards").glob(".*"))  # no temporary files left behind
    for source in (tmp_path / "shards", str(tmp_path / "shards/*.tar"),
                   str(tmp_path / "shards/shard-{000000..000001}.tar"), shards):
        ps = read_pair_source(source)
        assert _grouped(ps) == list(CAPTIONS.values())
        for ref, name in zip(ps.images, CAPTIONS):
            assert "#" in ref and np.array_equal(_pixels(ref), _pixels(data / name))
    assert len(read_pair_source(shards[0]).images) == 4

    # the retrieval reader accepts every format; shard images come back as encodable bytes
    for source in (data / "pairs.jsonl", data / "pairs.csv", data, tmp_path / "shards"):
        pairs = read_pairs(source)
        assert len(pairs.images) == 6 and len(pairs.captions) == 10
        assert TRANSFORM(pairs.images[:2]).shape == (2, 3, 16, 16)


def test_bad_rows_are_counted_not_fatal(data, tmp_path, caplog):
    lines = [
        json.dumps({"image": str(data / "img0.png"), "caption": "good one"}),
        "{not json",
        json.dumps({"image": str(data / "img1.png")}),  # no caption
        json.dumps({"caption": "no image"}),
        json.dumps({"image": "missing.png", "caption": "file is gone"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"image": str(data / "img1.png"), "caption": "another good one", "extra": 1}),
        json.dumps({"image": str(data / "img1.png"), "caption": 5}),  # a number is no caption (was kept as "5")
        json.dumps({"image": str(data / "img1.png"), "caption": ["ok", {"text": "nested"}]}),
    ]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        ps = read_pair_source(tmp_path / "bad.jsonl")
    assert ps.captions == ["good one", "another good one"]
    assert [loc.rsplit(":", 1)[1] for loc, _ in ps.skipped] == ["2", "3", "4", "5", "6", "9", "10"]
    assert "bad JSON" in ps.skipped[0][1] and "not found" in ps.skipped[3][1]
    assert [why.split(",")[0] for _, why in ps.skipped[-2:]] == ["the caption must be text (a string or a list of strings)"] * 2
    assert "skipped 7" in caplog.text

    (tmp_path / "bad.csv").write_text(f"image,caption\n{data / 'img0.png'},ok\nnope.png,missing\n{data / 'img1.png'}\n")
    ps = read_pair_source(tmp_path / "bad.csv")
    assert ps.captions == ["ok"] and len(ps.skipped) == 2

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        _write_image(folder / f"{i}.png", i)
    (folder / "0.txt").write_text("zero\n")
    (folder / "1.txt").write_text("\n  \n")
    ps = read_pair_source(folder)
    assert ps.captions == ["zero"]
    assert sorted(ps.skipped) == [("1.png", "caption file 1.txt is empty"), ("2.png", "no caption file 2.txt")]


def test_sources_without_pairs_are_errors(data, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "allbad.jsonl").write_text('{"image": "gone.png", "caption": "x"}\n{oops\n')
    (tmp_path / "header.csv").write_text("path_to_image,words\na.png,b\n")
    (tmp_path / "pairs.parquet").write_text("")
    nocap = tmp_path / "nocap"
    nocap.mkdir()
    _write_image(nocap / "a.png", 0)
    (tmp_path / "void").mkdir()
    cases = {
        "empty.jsonl": "no usable", "allbad.jsonl": "2 skipped", "header.csv": "caption column",
        "pairs.parquet": "not a readable Parquet file", "nocap": "no usable", "void": "no images",
        "missing.jsonl": "not found", "none-*.tar": "no tar shards match",
    }
    for name, message in cases.items():
        with pytest.raises(PolymodalError, match=message):
            read_pair_source(tmp_path / name)
    with pytest.raises(PolymodalError, match="not found"):
        read_pair_source(str(data / "shard-{0..1}.tar"))


def test_split_by_image(tmp_path):
    pairs = [Pair(f"/img/{i}.jpg", f"caption {i}.{j}") for i in range(40) for j in range(i % 3 + 1)]
    ps = PairSet.from_pairs(pairs)
    train, val = split_by_image(ps, 0.25, seed=3)
    assert len(val.images) == 10 and len(train.images) == 30
    assert not set(train.images) & set(val.images)
    assert sorted(train.captions + val.captions) == sorted(ps.captions)  # every caption on its image's side
    for part in (train, val):
        for p, owner in zip(part.pairs, part.caption_image):
            assert part.images[owner] == p.image
    again = split_by_image(ps, 0.25, seed=3)
    assert again[1].images == val.images and again[0].captions == train.captions
    assert split_by_image(ps, 0.25, seed=4)[1].images != val.images
    assert len(split_by_image(ps, 0.0)[1].images) == 0
    assert len(split_by_image(ps, 0.001)[1].images) == 1
    for bad in (-0.1, 1.0):
        with pytest.raises(PolymodalError, match="val_fraction"):
            split_by_image(ps, bad)


# ---------------------------------------------------------------------------------------------- shards


def test_brace_expansion():
    assert expand_braces("s-{000..003}.tar") == [f"s-00{i}.tar" for i in range(4)]
    assert expand_braces("{8..10}") == ["8", "9", "10"] and expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{y}z") == ["x{y}z"]


def test_shards_round_trip_and_split(data, tmp_path):
    ps = read_pair_source(data / "pairs.jsonl")
    shards = write_shards(ps, tmp_path, samples_per_shard=2, prefix="s")
    assert len(shards) == 3
    assert expand_shards(str(tmp_path / "s-{000000..000002}.tar")) == shards
    assert expand_shards(f"{shards[2]}::{tmp_path}/s-00000[01].tar") == [shards[2], shards[0], shards[1]]
    samples = list(iter_samples(str(tmp_path / "s-{000000..000002}.tar")))
    assert [c for s in samples for c in s.captions] == ps.captions
    assert [s.key for s in samples] == [f"{i:09d}" for i in range(6)]  # one sample per image, all its captions
    for s, image in zip(samples, ps.images):
        assert np.array_equal(_pixels(s.image), _pixels(image))
    assert next(iter_samples(shards[1:])).key == "000000002"
    # rewriting the same pairs gives byte-identical shards
    again = write_shards(ps, tmp_path / "again", samples_per_shard=2, prefix="s")
    assert [a.read_bytes() for a in again] == [s.read_bytes() for s in shards]



def test_corrupt_shard_samples_are_skipped(data, tmp_path, caplog):
    def add(tf, name, payload):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))

    good = (data / "img0.png").read_bytes()
    with tarfile.open(tmp_path / "mixed.tar", "w") as tf:
        add(tf, "a.png", good)
        add(tf, "a.txt", b"fine sample")
        add(tf, "b.png", b"this is not a png")  # corrupt image
        add(tf, "b.txt", b"broken image")
        add(tf, "c.png", good)  # no caption
        add(tf, "d.webp", good)  # wrong extension for the bytes, but Pillow reads them
        add(tf, "d.json", json.dumps({"caption": "from json", "url": "x"}).encode())
        add(tf, "e.png", good)
        add(tf, "e.json", b"{broken")
    (tmp_path / "truncated.tar").write_bytes((tmp_path / "mixed.tar").read_bytes()[:2000])
    with caplog.at_level(logging.WARNING):
        ps = read_pair_source(tmp_path / "mixed.tar")  # listing does not decode: b is kept here
        assert ps.captions == ["fine sample", "broken image", "from json"] and len(ps.skipped) == 2
        skipped = []
        assert [s.key for s in iter_samples(tmp_path / "truncated.tar", skipped=skipped)] == []  # the tail: dropped
    reasons = " | ".join(r for _, r in ps.skipped + skipped)
    assert "no caption" in reasons and "unreadable" in reasons
    assert "skipping" in caplog.text
    with pytest.raises(PolymodalError, match="not a readable image"):
        open_pair_image(ps.images[1])


# ---------------------------------------------------------------------------------------------- augmentation


def test_augment_is_deterministic_and_flip_flips(data):
    img = Image.open(data / "img0.png").convert("RGB")
    a, b = Augment(seed=7), Augment(seed=7)
    outs = [np.asarray(a(img)) for _ in range(5)]
    assert all(np.array_equal(x, np.asarray(b(img))) for x in outs)  # same seed, same stream
    assert len({x.tobytes() for x in outs}) > 1  # ... and the stream moves on
    gen1, gen2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(np.asarray(Augment()(img, gen1)), np.asarray(Augment()(img, gen2)))

    flip_only = Augment(random_resized_crop=False)
    mirrored = np.asarray(img)[:, ::-1]
    flipped = 0
    for seed in range(40):
        out = np.asarray(flip_only(img, seed))
        assert np.array_equal(out, mirrored) or np.array_equal(out, np.asarray(img))
        flipped += np.array_equal(out, mirrored)
    assert 8 < flipped < 32  # p = 0.5

    crops = Augment(flip=False, scale=(0.3, 0.5), ratio=(0.5, 2.0))
    for seed in range(30):
        (left, top, right, bottom), was_flipped = crops.params(img.size, seed)
        area = (right - left) * (bottom - top) / (img.width * img.height)
        assert not was_flipped and 0 <= left < right <= img.width and 0 <= top < bottom <= img.height
        assert 0.25 < area < 0.55 and 0.4 < (right - left) / (bottom - top) < 2.5
    # the transform after augmentation keeps its own output size
    assert TRANSFORM([crops(img, 0)]).shape == (1, 3, 16, 16)

    v5, v3 = views(img, 5, seed=1), views(img, 3, seed=1)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(v5, v3))  # view v depends on (seed, v)
    assert len({np.asarray(v).tobytes() for v in v5}) > 1
    with pytest.raises(PolymodalError, match="scale"):
        Augment(scale=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------- shared data


def test_flickr8k_dev_pairs():
    ps = read_pair_source(shared_data("flickr8k-dev") / "pairs.jsonl")
    assert len(ps.images) == 1000 and len(ps.pairs) == 5000 and not ps.skipped
    assert np.bincount(ps.caption_image).tolist() == [5] * 1000
    train, val = split_by_image(ps, 0.2, seed=0)
    assert len(val.images) == 200 and not set(train.images) & set(val.images)


# ---------------------------------------------------------------------------------------------- edge cases (mutation tests)


def test_tab_separated_csv_and_header_spelling(data, tmp_path):
    # open_clip's CSVs are often tab-separated but named .csv (csv_separator="\t"): the header's tab decides
    with (tmp_path / "openclip.csv").open("w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([("filepath", "title"), (data / "img0.png", "red, square")])
    assert read_pair_source(tmp_path / "openclip.csv").captions == ["red, square"]
    # header names are matched ignoring case and surrounding spaces (and a UTF-8 BOM, as Excel writes)
    (tmp_path / "excel.csv").write_bytes(f"\ufeff Image , Caption \n{data / 'img1.png'},green\n".encode("utf-8"))
    ps = read_pair_source(tmp_path / "excel.csv")
    assert ps.captions == ["green"] and ps.skipped == []


def test_csv_row_with_an_unquoted_comma_is_skipped_not_truncated(data, tmp_path):
    # "hello, world" unquoted is three fields: the row is reported, not read as the caption "hello"
    (tmp_path / "ragged.csv").write_text(f"image,caption\n{data / 'img0.png'},hello, world\n{data / 'img1.png'},ok\n")
    ps = read_pair_source(tmp_path / "ragged.csv")
    assert ps.captions == ["ok"]
    assert [(loc.rsplit(":", 1)[1], "fields" in why) for loc, why in ps.skipped] == [("2", True)]


def test_blank_captions_are_not_pairs(data, tmp_path):
    # whitespace-only captions are dropped; a row left with none is skipped (no empty-string training captions)
    rows = [{"image": "img0.png", "caption": "  \t "}, {"image": "img1.png", "caption": ["one", "   ", "two"]}]
    (tmp_path / "blank.jsonl").write_text("\n".join(json.dumps({**r, "image": str(data / r["image"])}) for r in rows))
    ps = read_pair_source(tmp_path / "blank.jsonl")
    assert ps.captions == ["one", "two"]
    assert len(ps.skipped) == 1 and "no caption" in ps.skipped[0][1]


def test_json_array_file_with_leading_whitespace(data, tmp_path):
    # a pretty-printed JSON array may start with blank lines; its items are numbered from 1
    rows = [{"image": str(data / "img0.png"), "caption": "a"}, {"image": "gone.png", "caption": "b"}]
    (tmp_path / "rows.json").write_text("\n\n  " + json.dumps(rows, indent=2))
    ps = read_pair_source(tmp_path / "rows.json")
    assert ps.captions == ["a"]
    assert [loc.rsplit(":", 1)[1] for loc, _ in ps.skipped] == ["2"]


def test_caption_folder_ignores_hidden_files(tmp_path):
    # .ipynb_checkpoints / macOS "._x.png" files are not images of the data set
    folder = tmp_path / "photos"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    _write_image(folder / "a.png", 0)
    (folder / "a.txt").write_text("the real one\n")
    _write_image(folder / ".ipynb_checkpoints" / "b.png", 1)
    (folder / ".ipynb_checkpoints" / "b.txt").write_text("a stale copy\n")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ps = read_pair_source(folder)
    assert ps.captions == ["the real one"] and ps.skipped == []


def test_brace_ranges_pad_when_either_end_is_padded():
    # as bash: {1..010} -> 001 .. 010 (a leading zero on either end sets the width)
    assert expand_braces("s-{1..010}.tar") == [f"s-{i:03d}.tar" for i in range(1, 11)]
    assert expand_braces("{010..8}") == ["010", "009", "008"]
