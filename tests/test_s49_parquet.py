"""`--pairs data.parquet` (stop 49, polymodal/data/parquet_rows.py): Hugging Face datasets' and img2dataset's
Parquet read where they are, images inside the file named "<file>#<row>" as a tar shard's are."""

import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from polymodal import cli
from polymodal.data.pairs import open_pair_image, read_pair_source
from polymodal.errors import PolymodalError

COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 30), (30, 230, 230), (200, 30, 200)]
WORDS = ["red", "green", "blue", "yellow", "cyan", "magenta"]


def _jpeg(rgb) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 40), rgb).save(out, "JPEG", quality=95)
    return out.getvalue()


def _hf(path, row_group_size=2):
    """Hugging Face's layout: an Image struct, a list of captions per photo, a split column."""
    table = pa.table({"image": [{"bytes": _jpeg(c), "path": f"{w}.jpg"} for c, w in zip(COLOURS, WORDS)],
                      "sentences": [[f"a {w} square", f"something {w}"] for w in WORDS],
                      "split": ["train", "train", "train", "train", "test", "test"]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_a_hugging_face_parquet_reads_with_its_images_inside(tmp_path):
    path = _hf(tmp_path / "train-00000-of-00001.parquet")
    pairs = read_pair_source(path)
    assert [(p.image, p.caption) for p in pairs.pairs[:3]] == [
        (f"{path}#0", "a red square"), (f"{path}#0", "something red"), (f"{path}#1", "a green square")]
    assert len(pairs.pairs) == 12 and len(pairs.images) == 6
    for row in (5, 0, 3):  # across row groups, in any order
        assert open_pair_image(f"{path}#{row}").getpixel((20, 20)) == pytest.approx(COLOURS[row], abs=6)


def retrieval_lines_beside_files(parquet, colours, words, capsys) -> list[dict]:
    """`eval retrieval`'s JSON line for ``parquet`` and for the same photos as files beside a JSONL (two captions
    each, "a {w} square" and "something {w}"), in that order."""
    folder, rows = parquet.parent, []
    for c, w in zip(colours, words):
        (folder / f"{w}.jpg").write_bytes(_jpeg(c))
        rows += [{"image": f"{w}.jpg", "caption": f"a {w} square"}, {"image": f"{w}.jpg", "caption": f"something {w}"}]
    (folder / "same.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    for pairs in (parquet, folder / "same.jsonl"):
        assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite"]) == 0
        lines.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    return lines


def figures(line: dict) -> dict:
    return {k: v for k, v in line.items() if "R@" in k or "rank" in k or k in ("images", "captions")}


def test_eval_retrieval_scores_it_as_the_same_photos_as_files(tmp_path, capsys):
    path = _hf(tmp_path / "data.parquet")
    lines = retrieval_lines_beside_files(path, COLOURS, WORDS, capsys)
    assert figures(lines[0]) == figures(lines[1]) and lines[0]["images"] == 6 and lines[0]["captions"] == 12
    assert cli.main(["eval", "retrieval", "--pairs", str(path), "--model", "lite", "--split", "test"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 2  # the split column kept


def test_img2dataset_bytes_and_path_columns(tmp_path):
    pq.write_table(pa.table({"jpg": [_jpeg(COLOURS[0]), None], "txt": ["a red square", "lost"]}),
                   tmp_path / "shard.parquet")
    pairs = read_pair_source(tmp_path / "shard.parquet")
    assert [p.caption for p in pairs.pairs] == ["a red square", "lost"]
    with pytest.raises(PolymodalError, match=r"shard.parquet#1: the row holds no image"):
        open_pair_image(pairs.pairs[1].image)  # (an unreadable photo, as eval and training count one)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(_jpeg(COLOURS[2]))
    pq.write_table(pa.table({"file": ["photos/a.jpg", "photos/gone.jpg"], "caption": ["blue", "gone"]}),
                   tmp_path / "paths.parquet")
    pairs = read_pair_source(tmp_path / "paths.parquet")  # paths relative to the file, as a CSV's
    assert [(p.image, p.caption) for p in pairs.pairs] == [((tmp_path / "photos" / "a.jpg").resolve(), "blue")]
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "photos/a.jpg"}], "caption": ["blue"]}),
                   tmp_path / "hf-paths.parquet")  # Hugging Face's Image feature holding a path, not bytes
    image = open_pair_image(read_pair_source(tmp_path / "hf-paths.parquet").pairs[0].image)
    assert image.getpixel((20, 20)) == pytest.approx(COLOURS[2], abs=6)


def test_mistakes_are_one_error(tmp_path, monkeypatch):
    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "caption": ["a"]}), tmp_path / "urls.parquet")
    with pytest.raises(PolymodalError, match=r"urls.parquet lists photo links \('url'\), not the photos; download "
                                             r"them first .* --url_col url --caption_col caption --output_format"):
        read_pair_source(tmp_path / "urls.parquet")
    pq.write_table(pa.table({"id": [1], "caption": ["a"]}), tmp_path / "none.parquet")
    with pytest.raises(PolymodalError, match=r"its columns are \['id', 'caption'\]; it needs an image column"):
        read_pair_source(tmp_path / "none.parquet")
    (tmp_path / "fake.parquet").write_text("image,caption\n")
    with pytest.raises(PolymodalError, match="fake.parquet is not a readable Parquet file"):
        read_pair_source(tmp_path / "fake.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # pyarrow not installed
    with pytest.raises(PolymodalError, match=r"reading Parquet needs pyarrow: pip install 'polymodal\[parquet\]'"):
        read_pair_source(tmp_path / "urls.parquet")


def test_a_vqa_parquet_scores_as_the_same_rows_as_files(tmp_path, capsys):
    """Hugging Face's VQAv2 layout: the photo inside, ten annotators' answers as objects, question_id, split."""
    answers = lambda a: [{"answer": a, "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]  # noqa: E731
    rows = [{"question": f"what color is the shape? ({w})", "answers": answers(w), "question_id": 10 + i,
             "answer_type": "other", "split": "val" if i else "train"} for i, w in enumerate(WORDS)]
    pq.write_table(pa.table({"image": [{"bytes": _jpeg(c), "path": None} for c in COLOURS],
                             **{k: [r[k] for r in rows] for k in rows[0]}}), tmp_path / "vqa.parquet", row_group_size=4)
    for c, w, r in zip(COLOURS, WORDS, rows):
        (tmp_path / f"{w}.jpg").write_bytes(_jpeg(c))
        r["image"] = f"{w}.jpg"
    (tmp_path / "same.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = []
    for qa in ("vqa.parquet", "same.jsonl"):
        assert cli.main(["eval", "vqa", "--qa", str(tmp_path / qa), "--split", "val"]) == 0
        lines.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert lines[0]["questions"] == 5 and lines[0]["accuracy"] == lines[1]["accuracy"]
    assert cli.main(["vqa", "--qa", str(tmp_path / "vqa.parquet"), "--out", str(tmp_path / "results.json")]) == 0
    assert [r["question_id"] for r in json.loads((tmp_path / "results.json").read_text())] == [10, 11, 12, 13, 14, 15]


def test_a_hugging_face_classification_parquet_names_its_classes(tmp_path, capsys):
    """A ClassLabel column stores numbers; the file's schema metadata names them (cifar10's "img", "label")."""
    meta = {"info": {"features": {"img": {"_type": "Image"}, "label": {"names": WORDS, "_type": "ClassLabel"}}}}
    table = pa.table({"img": [{"bytes": _jpeg(c), "path": None} for c in COLOURS], "label": list(range(6))})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), tmp_path / "test.parquet")
    from polymodal.eval.zeroshot import read_labelled_images

    images, labels = read_labelled_images(tmp_path / "test.parquet")
    assert labels == WORDS and images[2] == f"{tmp_path / 'test.parquet'}#2"
    assert cli.main(["eval", "zeroshot", "--labels-file", str(tmp_path / "test.parquet"), "--model", "lite"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["images"] == 6 and line["unreadable"] == 0 and sorted(line["per_class"]) == sorted(WORDS)
