"""Small user-facing flaws earlier reviews left (stop 45): each test fails without its fix."""

import json
import logging
import os

import pytest

from polymodal import cli


def test_eval_zeroshot_out_writes_an_error_item_for_an_unreadable_photo(gallery, tmp_path, capsys, lite,
                                                                        monkeypatch) -> None:
    # as eval vqa's and eval captions' --out do: the photo is in the items, with why, not silently missing
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    (tmp_path / "bad.jpg").write_text("not an image")
    names = ("cat", "coffee", "rocket")
    rows = [{"image": str(gallery / f"{n}.jpg"), "label": n} for n in names]
    rows.insert(1, {"image": "bad.jpg", "label": "cat"})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--model", "lite", "--out", str(out),
                     "--ci"]) == 0
    result = json.loads(capsys.readouterr().out)
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(i["image"]) for i in items] == ["cat.jpg", "bad.jpg", "coffee.jpg", "rocket.jpg"]
    assert items[1]["label"] == "cat" and "not a readable image" in items[1]["error"] and "rank" not in items[1]
    assert result["unreadable"] == 1 and result["images"] == 3 and "top1_ci95" in result  # --ci skips the error item


def test_seen_photos_warning_counts_only_the_photos_evaluated(gallery, tmp_path, caplog) -> None:
    # a file that is no image is left out of the evaluation as unreadable: "5 of the 7 evaluated photos" where 5
    # were scored read as though 2 more held-out photos were scored
    from polymodal.training_photos import count_seen_photos, photo_hash, write_training_photos

    write_training_photos(tmp_path / "model", {photo_hash(gallery / "cat.jpg")})
    (tmp_path / "bad.jpg").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert count_seen_photos(str(tmp_path / "model"),
                                 [gallery / "cat.jpg", gallery / "rocket.jpg", tmp_path / "bad.jpg"])[0] == 1
    assert "1 of the 2 evaluated photos" in caplog.text


@pytest.mark.parametrize("argv, said", [
    (["train", "-x"], "polymodal train: error: unrecognized arguments: -x (see polymodal train --help)"),
    (["eval", "-x"], "polymodal eval: error: unrecognized arguments: -x (see polymodal eval --help)"),
    (["-x", "search"], "polymodal: error: unrecognized arguments: -x (see polymodal --help)"),
    (["train", "-x", "contrastive"], "unrecognized arguments: -x (see polymodal train --help)"),
    (["search", "-x"], "unrecognized arguments: -x (see polymodal search --help)"),  # as before
])
def test_an_unknown_flag_is_named_with_the_help_of_the_command_it_was_given_to(argv, said, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and said in capsys.readouterr().err


def test_a_relative_or_home_cache_folder_is_made_absolute_once(tmp_path, monkeypatch) -> None:
    from polymodal.cache import cache_dir

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("POLYMODAL_CACHE", "s45-relative-cache")
    first = cache_dir()
    monkeypatch.chdir(tmp_path / "b")  # a notebook's %cd: the cache stays where it was
    assert first == cache_dir() == tmp_path / "a" / "s45-relative-cache"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POLYMODAL_CACHE", "~/s45-cache")  # quoted: the shell left "~" as it is
    assert cache_dir() == tmp_path / "home" / "s45-cache" and not (tmp_path / "b" / "~").exists()


@pytest.mark.parametrize("junk", [".DS_Store", "Thumbs.db", "._report.md"])
def test_export_out_holding_a_file_managers_metadata_is_still_new_or_an_earlier_export(junk, tmp_path,
                                                                                         capsys) -> None:
    pytest.importorskip("onnxruntime")
    empty, earlier = tmp_path / "empty", tmp_path / "earlier"
    empty.mkdir()
    earlier.mkdir()
    (earlier / "onnx_config.json").write_text("{}")
    (earlier / "report.md").write_text("")
    for folder in (empty, earlier):
        (folder / junk).write_text("")
        # --max-drop-points nan is refused right after the --out check: reaching it means --out passed
        assert cli.main(["export", "onnx", "lite", "--out", str(folder), "--max-drop-points", "nan"]) == 2
        err = capsys.readouterr().err
        assert "--max-drop-points must be 0 or more" in err and "not a polymodal export" not in err
    (empty / ".git").mkdir()  # a hidden folder of the user's own: the export would delete it
    assert cli.main(["export", "onnx", "lite", "--out", str(empty), "--max-drop-points", "nan"]) == 2
    assert "not a polymodal export (.git)" in capsys.readouterr().err


def test_numbers_are_their_text_as_answers_and_choices_alike(easy_vqa, gallery) -> None:
    from polymodal.data.answers import unique_choices
    from polymodal.eval.vqa import as_rows

    # a JSON count written 2.0 is the answer "2", among the choices [1, 2] (it was skipped: "'2.0' not among")
    row = as_rows([{"image": "x.jpg", "question": "how many?", "answer": 2.0, "choices": [1.0, 2]}])[0]
    assert row.answer == "2" and row.choices == ("1", "2")
    assert list(unique_choices([1, 2.0, 2.5])) == ["1", "2", "2.5"]
    # Python's answer() takes numbers as a QA file's "choices" does (it refused them: "not a string")
    said = easy_vqa.answer(gallery / "cat.jpg", "what shape is it?", choices=["circle", 3])
    assert [a for a, _ in said["alternatives"]] == ["circle", "3"]
    with pytest.raises(Exception, match="not a string"):  # True is no number a user means as an answer
        unique_choices([True, "no"])
