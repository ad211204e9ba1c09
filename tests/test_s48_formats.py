"""What a review of the data formats users already have on disk found (stop 48): a CSV or JSONL written on Windows
(`images\\cat.jpg`) had every row "not found" on Linux; Flickr30k's results.csv ("image_name| comment_number|
comment") was refused for its header; a tar shard made with `tar -cf x.tar folder/` (a sample's files apart) had
each photo skipped as having "no caption" though its .txt was in the tar, and the few samples whose files fell
together by chance were evaluated with a warning naming that symptom, not the cause; and img2dataset's .parquet
beside its shards was an "unknown pairs format". (VQA v2's files: tests/test_s48_vqa_v2.py.)"""

import io
import json

import pytest
from PIL import Image

from polymodal.data.pairs import read_pair_source
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa
from polymodal.eval.zeroshot import read_labelled_images
from test_s38_data_review import _shard as _tar


def _photos(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40, 10, 10)).save(folder / f"p{i}.jpg")
    return [f"p{i}.jpg" for i in range(n)]


def test_windows_backslash_paths_find_their_photos(tmp_path):
    names = _photos(tmp_path / "images", 3)
    (tmp_path / "pairs.csv").write_bytes(b"filepath,title\r\n" + b"".join(
        f"images\\{n},photo {i}\r\n".encode() for i, n in enumerate(names)))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": f"images\\{n}", "caption": f"photo {i}"})
                                                  + "\n" for i, n in enumerate(names)))
    for source in ("pairs.csv", "pairs.jsonl"):
        pairs = read_pair_source(tmp_path / source)
        assert [(p.image, p.caption) for p in pairs.pairs] == [
            ((tmp_path / "images" / n).resolve(), f"photo {i}") for i, n in enumerate(names)]
    (tmp_path / "qa.jsonl").write_text(json.dumps({"image": "images\\p1.jpg", "question": "red?", "answer": "no"}))
    assert [r.image for r in read_qa(tmp_path / "qa.jsonl")] == [(tmp_path / "images" / "p1.jpg").resolve()]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"image": f"images\\{n}", "label": lab}) + "\n"
                                                   for n, lab in zip(names, ["cat", "dog", "cat"])))
    images, _ = read_labelled_images(tmp_path / "labels.jsonl")
    assert images == [(tmp_path / "images" / n).resolve() for n in names]


def test_flickr30k_results_csv(tmp_path):
    names = _photos(tmp_path, 2)
    lines = ["image_name| comment_number| comment"]
    lines += [f"{n}| {k}| photo {i} , take {k} ." for i, n in enumerate(names) for k in range(2)]
    lines.append(f"{names[1]}| 2 a row that lost its separator .")  # as in Kaggle's copy: skipped, not misread
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    pairs = read_pair_source(tmp_path / "results.csv")
    assert [(p.image.name, p.caption) for p in pairs.pairs] == [
        (n, f"photo {i} , take {k} .") for i, n in enumerate(names) for k in range(2)]
    assert len(pairs.skipped) == 1


def test_shard_with_a_samples_files_apart_names_the_cause(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="JPEG")
    jpg = buf.getvalue()
    # `tar -cf x.tar *.jpg *.txt`, or a folder in directory order: one sample's files fall together by chance
    _tar(tmp_path / "x.tar", [("a.jpg", jpg), ("b.jpg", jpg), ("b.txt", b"photo b"), ("c.jpg", jpg),
                              ("a.txt", b"photo a"), ("c.txt", b"photo c")])
    pairs = read_pair_source(tmp_path / "x.tar")
    assert pairs.captions == ["photo b"]  # read before the disorder showed; the skip says the rest is skipped
    assert len(pairs.skipped) == 1 and "not next to each other" in pairs.skipped[0][1]  # was 2: "no caption" first
    assert "tar --sort=name" in pairs.skipped[0][1]
    _tar(tmp_path / "z.tar", [("a.jpg", jpg), ("b.jpg", jpg), ("a.txt", b"photo a"), ("b.txt", b"photo b")])
    with pytest.raises(PolymodalError, match=r"not next to each other .*tar --sort=name"):
        read_pair_source(tmp_path / "z.tar")
    # a well-formed shard after it still reads
    _tar(tmp_path / "y.tar", [("d.jpg", jpg), ("d.txt", b"photo d"), ("e.jpg", jpg), ("e.txt", b"photo e")])
    pairs = read_pair_source([tmp_path / "z.tar", tmp_path / "y.tar"])
    assert pairs.captions == ["photo d", "photo e"]
    assert len(pairs.skipped) == 1 and "tar --sort=name" in pairs.skipped[0][1]


def test_img2dataset_parquet_points_to_its_shards(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    (tmp_path / "00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(PolymodalError, match=r"Parquet.*img2dataset.*pass the shards"):
        read_pair_source(tmp_path / "00000.parquet")


def test_a_csv_split_column_is_filtered_and_said_as_json_rows_are(tmp_path, caplog):
    from polymodal.data.jsonl import only_splits

    names = _photos(tmp_path, 4)
    rows = [f"{n},photo {i},{'test' if i == 3 else 'train'}" for i, n in enumerate(names)]
    (tmp_path / "pairs.csv").write_text("image,caption,split\n" + "\n".join(rows) + "\n")
    everything = read_pair_source(tmp_path / "pairs.csv")  # read whole, as before, but no longer without a word
    assert len(everything.pairs) == 4
    assert "rows carry 2 split values (train 3, test 1) and all of them are read" in caplog.text
    assert "jq" not in caplog.text  # its filter is for JSON
    with only_splits("test"):
        assert [p.caption for p in read_pair_source(tmp_path / "pairs.csv").pairs] == ["photo 3"]
    with only_splits("TRAIN"):
        assert len(read_pair_source(tmp_path / "pairs.csv").pairs) == 3
    with pytest.raises(PolymodalError, match=r"has no rows of split 'dev'"), only_splits("dev"):
        read_pair_source(tmp_path / "pairs.csv")
    (tmp_path / "plain.csv").write_text("image,caption\n" + "\n".join(f"{n},photo" for n in names) + "\n")
    with pytest.raises(PolymodalError, match=r"and CSV rows on a split column\), and none of the data files"):
        with only_splits("test"):
            read_pair_source(tmp_path / "plain.csv")


def test_flickr_caption_text_files_as_published_and_as_kaggle_copies_them(tmp_path):
    # Flickr8k's zips: Flickr8k_text/Flickr8k.token.txt beside Flicker8k_Dataset/ (sic)
    names = _photos(tmp_path / "flickr8k" / "Flicker8k_Dataset", 2)
    (tmp_path / "flickr8k" / "Flickr8k_text").mkdir()
    token = tmp_path / "flickr8k" / "Flickr8k_text" / "Flickr8k.token.txt"
    token.write_text("".join(f"{n}#{k}\tA photo {i} , take {k} .\n" for i, n in enumerate(names) for k in range(2))
                     + "a line that is no caption\n")
    pairs = read_pair_source(token)
    photos = (tmp_path / "flickr8k" / "Flicker8k_Dataset").resolve()
    assert [(p.image, p.caption) for p in pairs.pairs] == [
        (photos / n, f"A photo {i} , take {k} .") for i, n in enumerate(names) for k in range(2)]
    assert len(pairs.skipped) == 1 and "NAME.jpg#N<tab>caption" in pairs.skipped[0][1]
    # Kaggle's Flickr8k: captions.txt (a CSV) beside Images/
    names = _photos(tmp_path / "kaggle" / "Images", 2)
    (tmp_path / "kaggle" / "captions.txt").write_text("image,caption\n" + "".join(
        f"{n},a photo {i}\n" for i, n in enumerate(names)))
    pairs = read_pair_source(tmp_path / "kaggle" / "captions.txt")
    assert [(p.image, p.caption) for p in pairs.pairs] == [
        ((tmp_path / "kaggle" / "Images" / n).resolve(), f"a photo {i}") for i, n in enumerate(names)]
    (tmp_path / "notes.txt").write_text("some words\n")
    with pytest.raises(PolymodalError, match="unknown pairs format"):
        read_pair_source(tmp_path / "notes.txt")


def test_flickr8k_split_lists_beside_the_token_file_name_each_photos_split(tmp_path, caplog):
    from polymodal.data.jsonl import only_splits

    names = _photos(tmp_path / "Flicker8k_Dataset", 3)
    text = tmp_path / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text("".join(f"{n}#0\tphoto {i}\n" for i, n in enumerate(names)))
    (text / "Flickr_8k.trainImages.txt").write_text(f"{names[0]}\n{names[1]}\n")
    (text / "Flickr_8k.testImages.txt").write_text(f"{names[2]}\n")
    assert len(read_pair_source(text / "Flickr8k.token.txt").pairs) == 3
    assert "rows carry 2 split values (train 2, test 1) and all of them are read" in caplog.text
    with only_splits("test"):
        assert [p.caption for p in read_pair_source(text / "Flickr8k.token.txt").pairs] == ["photo 2"]
    with only_splits("train"):
        assert [p.caption for p in read_pair_source(text / "Flickr8k.token.txt").pairs] == ["photo 0", "photo 1"]
