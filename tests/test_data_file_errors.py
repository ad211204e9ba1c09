"""What a user's data files get wrong, each one clear error or warning: files that are not UTF-8 (a Latin-1 export,
PowerShell's UTF-16) refused naming the file and line instead of training on garbled words ("gar\ufffdon"); text
that is not valid Unicode; skipped rows named (all of them with -v); no warning before a no-usable-rows error."""

import json

import pytest
from PIL import Image

from polymodal import cli
from polymodal.data.pairs import read_pair_sources
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa

CSV = "image,caption\na.png,a red square\nb.png,un garçon\n"
JSONL = "".join(json.dumps({"image": i, "caption": c}, ensure_ascii=False) + "\n"
                for i, c in [("a.png", "a red square"), ("b.png", "un garçon")])


@pytest.fixture
def folder(tmp_path):
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), name == "a" and "red" or "blue").save(tmp_path / f"{name}.png")
    return tmp_path


@pytest.mark.parametrize("name, text", [("p.csv", CSV), ("p.jsonl", JSONL)])
def test_utf8_with_or_without_bom_reads(folder, name, text):
    for encoding in ("utf-8", "utf-8-sig"):
        (folder / name).write_text(text, encoding=encoding)
        assert read_pair_sources([str(folder / name)]).captions == ["a red square", "un garçon"]


@pytest.mark.parametrize("name, text, line", [("p.csv", CSV, 3), ("p.jsonl", JSONL, 2)])
def test_latin1_is_refused_naming_the_line(folder, name, text, line):
    (folder / name).write_text(text, encoding="latin-1")
    with pytest.raises(PolymodalError, match=rf"{name}:{line} is not UTF-8 text .*save the file as UTF-8"):
        read_pair_sources([str(folder / name)])


@pytest.mark.parametrize("name, text", [("p.csv", CSV), ("p.jsonl", JSONL)])
def test_utf16_is_refused_as_utf16(folder, name, text):
    (folder / name).write_text(text, encoding="utf-16")
    with pytest.raises(PolymodalError, match=rf"{name} is UTF-16 \(or binary\), not UTF-8 text"):
        read_pair_sources([str(folder / name)])
    (folder / name).write_bytes(text.encode("utf-16-le"))  # no BOM: NUL bytes give it away
    with pytest.raises(PolymodalError, match="is UTF-16"):
        read_pair_sources([str(folder / name)])


def test_a_qa_file_in_latin1_is_one_line_and_exit_2(folder, capsys):
    qa = folder / "qa.jsonl"
    qa.write_text(json.dumps({"image": "a.png", "question": "is it rouge?", "answer": "oui, très"},
                             ensure_ascii=False) + "\n", encoding="latin-1")
    with pytest.raises(PolymodalError, match="qa.jsonl:1 is not UTF-8"):
        read_qa([str(qa)])
    assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "easy-vqa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "qa.jsonl:1 is not UTF-8 text" in err


def test_skipped_rows_warn_with_the_first_and_list_every_one_at_info(folder, caplog):
    rows = [{"image": "a.png", "question": "is it red?", "answer": "yes"},
            {"image": "a.png", "question": "is it red?"},
            {"image": "nope.png", "question": "is it red?", "answer": "no"}]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("INFO", logger="polymodal"):
        assert len(read_qa(folder / "qa.jsonl")) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{folder / 'qa.jsonl'}: skipped 2 unusable rows (first: {folder / 'qa.jsonl'}:2: no answer; "
                        "-v lists them all)"]
    listed = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "skipped" in r.getMessage()]
    assert [m.split(": ", 1)[0] for m in listed] == [f"skipped {folder / 'qa.jsonl'}:2", f"skipped {folder / 'qa.jsonl'}:3"]


def test_a_qa_file_with_no_usable_row_is_one_line(folder, capsys):
    (folder / "qa.jsonl").write_text(json.dumps({"image": "nope.png", "question": "q?", "answer": "no"}) + "\n")
    assert cli.main(["eval", "vqa", "--qa", str(folder / "qa.jsonl"), "--model", "easy-vqa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no usable question-answer rows; 1 skipped" in err, err


def test_text_that_is_not_valid_unicode_is_one_error_naming_it(lite, capsys, folder):
    with pytest.raises(PolymodalError, match=r"text 2 is not valid Unicode \(U\+D800 at character 5"):
        lite.encode_text(["a dog", "cat \ud800"])
    assert lite.encode_text(["a dog"]).shape == (1, 384)
    # bad bytes typed at a shell reach argv as surrogate escapes
    assert cli.main(["classify", str(folder / "a.png"), "--labels", "cat,d\udcffog", "--model", "lite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not valid Unicode (U+DCFF" in err



def test_a_folder_holding_a_rows_file_names_that_file(folder, caplog):
    (folder / "pairs.jsonl").write_text(JSONL)
    with pytest.raises(PolymodalError, match=f"{folder} holds pairs.jsonl: to read its rows, pass that file"):
        read_pair_sources([str(folder)])  # a.png and b.png have no .txt captions: nothing to read as a folder
    (folder / "a.txt").write_text("a red square\n")
    with caplog.at_level("WARNING"):
        assert read_pair_sources([str(folder)]).captions == ["a red square"]
    assert "holds pairs.jsonl: to read its rows, pass that file" in caplog.text
