"""Stop 51: `classify` with no readable photo loaded its model first (~5 s) to say "not found"; now the photos'
headers are checked first, as `caption` checks them (one shared helper)."""

import polymodal
from polymodal import cli


def test_classify_with_no_readable_photo_says_so_before_loading_a_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(polymodal, "load", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("model loaded")))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    assert cli.main(["classify", str(tmp_path / "missing.jpg"), "--labels", "cat,dog"]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["classify", str(tmp_path / "missing.jpg"), str(text), "--labels", "cat,dog"]) == 2
    assert "none of the 2 images could be read" in capsys.readouterr().err


def test_classify_still_runs_the_readable_photos_beside_a_missing_one(lite, gallery, tmp_path, capsys):
    assert cli.main(["classify", str(gallery / "cat.jpg"), str(tmp_path / "missing.jpg"), "--labels", "cat,car",
                     "--json"]) == 0
    out = capsys.readouterr().out
    assert '"label": "cat"' in out and "missing.jpg" in out
