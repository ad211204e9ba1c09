"""Stop 49, zero-shot and retrieval on one's own data: a JSON list of labels for classify, an ImageNet-style folder
of class folders for eval zeroshot, its per-class figures, and image->image --explain mapping a photo other than the
query itself. Fast: the colour-naming fake model of test_cli_encoders_audit, no `lite` load."""

import json
import logging

from PIL import Image
from test_cli_encoders_audit import one_line_error, photos, run, spy_load  # noqa: F401 (fixtures)


def test_classify_reads_a_json_list_of_labels(capsys, spy_load, photos, tmp_path):  # noqa: F811
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["red", "green", " blue "], indent=2))  # pretty-printed, as json.dump(indent=) writes
    code, out, err = run(capsys, "classify", photos / "red.png", "--labels-from", labels, "--model", "fake", "--json")
    assert code == 0 and "one label" not in err  # it was one label, '["red", "green", "blue"]', scoring 1.0
    assert [x["label"] for x in json.loads(out)[0]["labels"]] == ["red", "green", "blue"]
    labels.write_text('["red", 3]')
    assert "must be a list of names" in one_line_error(capsys, "classify", photos / "red.png", "--labels-from",
                                                       labels, "--model", "fake")


def _class_folders(root, extra_loose=False):
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), rgb).save(root / name / f"{i}.png")
    (root / "red" / "notes.txt").write_text("not a photo")
    if extra_loose:
        Image.new("RGB", (12, 10), (9, 9, 9)).save(root / "loose.png")
    return root


def test_eval_zeroshot_reads_class_folders_and_reports_each_class(capsys, spy_load, tmp_path, caplog):  # noqa: F811
    root = _class_folders(tmp_path / "set", extra_loose=True)
    (root / "green" / "0.png").unlink()
    Image.new("RGB", (12, 10), (0, 0, 255)).save(root / "green" / "0.png")  # a green-labelled photo that is blue
    with caplog.at_level(logging.WARNING):
        code, out, _ = run(capsys, "eval", "zeroshot", "--labels-file", root, "--model", "fake", "--out",
                           tmp_path / "items.jsonl")
    line = json.loads(out)
    assert code == 0 and line["images"] == 6 and line["classes"] == 3 and line["skipped_rows"] == 1  # loose.png
    assert "loose.png" in caplog.text
    assert line["per_class"] == {"blue": 1.0, "green": 0.5, "red": 1.0}
    assert line["per_class_count"] == {"blue": 2, "green": 2, "red": 2}
    assert abs(line["top1"] - 5 / 6) < 1e-3 and abs(line["balanced_top1"] - 5 / 6) < 1e-3
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert {(item["image"], item["label"]) for item in items} == {
        (str((root / c / f"{i}.png").resolve()), c) for c in ("red", "green", "blue") for i in range(2)}


def test_class_folder_mistakes_are_one_line(capsys, spy_load, tmp_path, caplog):  # noqa: F811
    _class_folders(tmp_path / "split" / "val")  # the split above the class folders: "val" is no class
    assert "holds folders, not photos" in one_line_error(capsys, "eval", "zeroshot", "--labels-file",
                                                         tmp_path / "split", "--model", "fake")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (12, 10)).save(tmp_path / "flat" / "a.png")
    assert "holds no class folders of photos" in one_line_error(capsys, "eval", "zeroshot", "--labels-file",
                                                                tmp_path / "flat", "--model", "fake")
    wordnet = tmp_path / "wordnet"
    for wnid in ("n01440764", "n01443537"):
        (wordnet / wnid).mkdir(parents=True)
        Image.new("RGB", (12, 10)).save(wordnet / wnid / "a.png")
    with caplog.at_level(logging.WARNING):
        run(capsys, "eval", "zeroshot", "--labels-file", wordnet, "--model", "fake")
    assert "WordNet ids" in caplog.text


def test_image_search_explains_the_first_match_that_is_not_the_query(capsys, spy_load, photos, tmp_path,  # noqa: F811
                                                                     monkeypatch):
    from polymodal.apps import explain

    mapped = []
    monkeypatch.setattr(explain, "occlusion_heat", lambda model, image, query, **kw: mapped.append(image) or 0)
    monkeypatch.setattr(explain, "save_heatmap", lambda image, heat, out, **kw: out)
    Image.new("RGB", (12, 10), (250, 5, 5)).save(photos / "reddish.png")
    assert run(capsys, "index", photos, "--db", tmp_path / "db", "--model", "fake")[0] == 0
    why = tmp_path / "why.png"
    code, out, _ = run(capsys, "search", "--db", tmp_path / "db", "--image", photos / "red.png", "-k", "3",
                       "--explain", why, "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["path"] == str(photos / "red.png")  # the query itself, first, as the README says
    assert mapped == [str(photos / "reddish.png")] and rows[1]["explain"] == str(why) and "explain" not in rows[0]
    code, out, _ = run(capsys, "search", "--db", tmp_path / "db", "--image", photos / "red.png", "-k", "2",
                       "--explain", why)
    assert code == 0 and "why rank 2 matched" in out
    code, out, _ = run(capsys, "search", "--db", tmp_path / "db", "--image", photos / "red.png", "-k", "1",
                       "--explain", why, "--json")  # only the query itself: it is what there is to map
    assert code == 0 and json.loads(out)[0]["explain"] == str(why)


def test_class_folders_count_the_photos_in_their_own_subfolders(tmp_path):
    """As torchvision's ImageFolder: dog/puppies/1.jpg is a dog (it was left out without a word); hidden folders not."""
    from PIL import Image

    from polymodal.eval.zeroshot import read_labelled_images

    for where in ("dog/a.jpg", "dog/puppies/b.jpg", "dog/.thumbs/c.jpg", "cat/d.jpg"):
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), "red").save(tmp_path / where)
    images, labels = read_labelled_images(tmp_path)
    assert sorted(zip(labels, (p.name for p in images))) == [("cat", "d.jpg"), ("dog", "a.jpg"), ("dog", "b.jpg")]
