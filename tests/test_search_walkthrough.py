"""A new user searching and classifying their own photo folder offline (README's index / search / classify /
eval zeroshot / eval retrieval), with the mistakes and messy files a real collection has: a truncated JPEG among
good photos, a label typed twice, a heat-map file name with the wrong suffix, a model folder moved after
indexing, a folder listed together with one of its subfolders. Each test failed before its fix."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

import polymodal
from conftest import cli_json
from polymodal import cli
from polymodal.errors import PolymodalError


@pytest.fixture
def quick_load(monkeypatch, lite):
    """The CLI's polymodal.load answers with the session's `lite` (one load for the whole file)."""
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)
    return lite


@pytest.fixture
def truncated(tmp_path, gallery):
    """The first 2 kB of a real JPEG: what an interrupted copy leaves."""
    path = tmp_path / "truncated.jpg"
    path.write_bytes((gallery / "cat.jpg").read_bytes()[:2000])
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- classify ------------------------------------------------------------------------------------------------------


def test_classify_skips_an_unreadable_photo_and_classifies_the_rest(quick_load, gallery, truncated, capsys):
    """One truncated JPEG among the photos ended the whole command with one error and no results (README: "A
    corrupt image is reported and skipped")."""
    good = [gallery / "cat.jpg", gallery / "coffee.jpg"]
    code, out, err = run(capsys, "classify", good[0], truncated, good[1], "--labels", "cat,coffee")
    assert code == 0, err
    assert str(good[0]) in out and str(good[1]) in out and "Traceback" not in err
    assert f"skipped {truncated}" in err and "not a readable image" in err
    code, out, _ = run(capsys, "classify", good[0], truncated, "--labels", "cat,coffee", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["labels"][0]["label"] == "cat" and "not a readable image" in rows[1]["error"]


def test_classify_with_no_readable_photo_is_one_error(quick_load, truncated, tmp_path, capsys):
    code, out, err = run(capsys, "classify", truncated, tmp_path / "gone.jpg", "--labels", "cat,dog")
    assert code == 2 and out == "" and err.count("\n") == 1 and "none of the 2 images" in err


def test_a_label_given_twice_counts_once(quick_load, gallery, capsys):
    """`--labels cat,dog,cat` listed cat twice and split its probability between the copies (0.5 + 0.5)."""
    once = quick_load.classify([gallery / "cat.jpg"], ["cat", "dog"])[0]
    twice = quick_load.classify([gallery / "cat.jpg"], ["cat", "dog", "cat"])[0]
    assert [label for label, _ in twice] == ["cat", "dog"]
    assert np.allclose([s for _, s in twice], [s for _, s in once])
    code, out, _ = run(capsys, "classify", gallery / "cat.jpg", "--labels", "cat,dog,cat", "--json")
    labels = json.loads(out)[0]["labels"]
    assert code == 0 and [x["label"] for x in labels] == ["cat", "dog"] and labels[0]["score"] > 0.9


# -- eval ----------------------------------------------------------------------------------------------------------


def test_eval_zeroshot_leaves_out_an_unreadable_photo(quick_load, gallery, truncated, tmp_path, capsys):
    """One truncated JPEG in a labelled set ended `eval zeroshot` (README: unreadable image files are counted and
    reported, not fatal)."""
    rows = [{"image": str(gallery / f"{n}.jpg"), "label": n} for n in ("cat", "coffee", "rocket")]
    rows.append({"image": str(truncated), "label": "cat"})
    labels = tmp_path / "labelled.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "eval", "zeroshot", "--labels-file", labels, "--model", "lite")
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 3 and result["classes"] == 3 and result["top1"] == 1.0


def test_eval_retrieval_leaves_out_an_unreadable_photo_and_its_captions(quick_load, gallery, truncated, tmp_path, capsys):
    rows = [{"image": str(gallery / "cat.jpg"), "caption": "a tabby cat"},
            {"image": str(truncated), "caption": "a cat"}, {"image": str(truncated), "caption": "a kitten"},
            {"image": str(gallery / "rocket.jpg"), "caption": "a rocket on the launch pad"}]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run(capsys, "eval", "retrieval", "--pairs", pairs, "--model", "lite")
    assert code == 0, err
    result = json.loads(out)
    assert (result["images"], result["unreadable"], result["captions"]) == (2, 1, 2) and result["t2i_R@1"] == 1.0


def test_eval_retrieval_reads_several_sources_as_one_set(quick_load, gallery, tmp_path, capsys):
    """`--pairs` took one file while training takes several: held-out sets kept in two files had to be merged."""
    rows = [{"image": str(gallery / name), "caption": caption} for name, caption in (
        ("cat.jpg", "a tabby cat"), ("rocket.jpg", "a rocket on the launch pad"), ("coffee.jpg", "a cup of coffee"))]
    for name, part in (("all", rows), ("a", rows[:2]), ("b", rows[1:])):  # rocket in both: counted once
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    code, out, err = run(capsys, "eval", "retrieval", "--pairs", tmp_path / "all.jsonl", "--model", "lite")
    assert code == 0, err
    whole = json.loads(out)
    code, out, err = run(capsys, "eval", "retrieval", "--pairs", tmp_path / "a.jsonl", tmp_path / "b.jsonl",
                         "--model", "lite")
    assert code == 0, err
    both = json.loads(out)
    assert both.pop("skipped_rows") == 1 and whole.pop("skipped_rows") == 0  # the rocket row given twice, counted once
    assert both == whole and (whole["images"], whole["captions"]) == (3, 3)


# -- search --------------------------------------------------------------------------------------------------------


def test_a_heat_map_name_that_cannot_be_written_is_refused_before_the_model_loads(db, monkeypatch, capsys):
    """`--explain why.gif` ran the search and 37 occlusion passes, then refused the file name."""
    def no_load(*a, **k):
        raise AssertionError("the model loaded before the file name was checked")

    monkeypatch.setattr(polymodal, "load", no_load)
    code, out, err = run(capsys, "search", "--db", db, "a cat", "--explain", "why.gif")
    assert code == 2 and out == "" and "end the file name in .png" in err


def test_search_says_the_indexs_model_folder_has_moved(quick_load, gallery, tmp_path, capsys):
    """An index built with `--model runs/mine/model` whose run folder was later moved said only "unknown model
    '...': not a built-in name", with no word that the index names it or that --model points to its new place."""
    db = tmp_path / "db"
    cli_json(["index", gallery, "--db", db, "--json"])
    with sqlite3.connect(db / "meta.sqlite") as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'model_name'", (str(tmp_path / "runs" / "mine" / "model"),))
    code, _, err = run(capsys, "search", "--db", db, "a cat")
    assert code == 2 and "no longer there" in err and "--model" in err and "Traceback" not in err


# -- index ---------------------------------------------------------------------------------------------------------


def test_a_folder_listed_with_its_subfolder_counts_each_photo_once(quick_load, gallery, tmp_path):
    """`index pics pics/2023` synced pics/2023 twice: its photos counted as added and again as unchanged."""
    root = tmp_path / "pics"
    (root / "2023").mkdir(parents=True)
    for name in ("cat", "coffee"):
        shutil.copy(gallery / f"{name}.jpg", root / f"{name}.jpg")
    shutil.copy(gallery / "rocket.jpg", root / "2023" / "rocket.jpg")
    db = tmp_path / "db"
    first = cli_json(["index", root, root / "2023", root, "--db", db, "--json"])
    assert (first["added"], first["unchanged"], first["index"]["count"]) == (3, 0, 3)
    again = cli_json(["index", root / "2023", root, "--db", db, "--json"])
    assert (again["added"], again["unchanged"]) == (0, 3)


def test_a_file_named_twice_is_one_file(quick_load, gallery, tmp_path, capsys, monkeypatch):
    shutil.copy(gallery / "cat.jpg", tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["index", "cat.jpg", "./cat.jpg", str(tmp_path / "cat.jpg"), "--db", "db"]) == 0
    out = capsys.readouterr().out
    assert "indexed 1 file into db" in out, out


def test_unreadable_image_errors_give_pillows_reason(gallery, tmp_path):
    from polymodal.data.images import load_image

    whole = (gallery / "cat.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "text.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PolymodalError, match=r"half\.jpg \(image file is truncated"):
        load_image(tmp_path / "half.jpg")
    with pytest.raises(PolymodalError) as info:
        load_image(tmp_path / "text.jpg")
    assert str(info.value).endswith("text.jpg (cannot identify image file)")  # the path is not repeated
    with pytest.raises(PolymodalError) as info:
        load_image(b"not a jpeg")
    assert "(cannot identify image file)" in str(info.value) and "0x" not in str(info.value)
