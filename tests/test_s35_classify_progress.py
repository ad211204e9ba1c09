"""`polymodal classify` over a folder's worth of photos (or a long label list) printed nothing until every image was
done: it now shows a bar on stderr past one batch, as `index` does; none for a few photos or with --json."""

import json

import pytest

import polymodal
from polymodal import cli


@pytest.fixture
def shared_lite(lite, monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)  # the session's lite: no second load per call
    return lite


def _classify(capsys, *argv):
    code = cli.main(["classify", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_many_photos_show_a_bar_and_every_photo_is_still_classified(gallery, shared_lite, capsys):
    photos = sorted(gallery.glob("*.jpg"))
    many = (photos * (cli.CLASSIFY_BATCH // len(photos) + 2))[: cli.CLASSIFY_BATCH + 5]
    out, err = _classify(capsys, *many, "--labels", "cat,rocket", "--json")
    assert "classifying" not in err  # --json: no bar
    rows = json.loads(out)
    assert [r["image"] for r in rows] == [str(p) for p in many] and all("labels" in r for r in rows)
    out, err = _classify(capsys, *many, "--labels", "cat,rocket")
    assert "classifying: 100%" in err and f"{len(many)}/{len(many)}" in err
    assert out.count("label") == len(many)  # one table per photo


def test_a_few_photos_show_no_bar(gallery, shared_lite, capsys):
    _, err = _classify(capsys, gallery / "cat.jpg", gallery / "rocket.jpg", "--labels", "cat,rocket")
    assert "classifying" not in err and "class prompts" not in err


def test_a_long_label_list_shows_a_bar_for_its_prompts(gallery, shared_lite, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing number {i}\n" for i in range(cli.CLASSIFY_BATCH + 1)))
    out, err = _classify(capsys, gallery / "cat.jpg", "--labels-from", labels, "--top-k", "2")
    assert "class prompts: 100%" in err and "classifying" not in err
