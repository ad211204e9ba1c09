"""`vqa --model coco-yesno --explain`: the model has no heat map; said before it answers (it had an explain() that
raised, so the up-front check passed, the answer was computed, then the command failed)."""

from polymodal import cli


def test_coco_yesno_explain_is_refused_before_answering(gallery, tmp_path, capsys, monkeypatch):
    import polymodal.models.yesno as yesno

    def no_answer(*args, **kwargs):
        raise AssertionError("answered before refusing --explain")

    monkeypatch.setattr(yesno.YesNoModel, "answer", no_answer)
    heat = tmp_path / "h.png"
    code = cli.main(["vqa", str(gallery / "cat.jpg"), "is there a cat?", "--model", "coco-yesno", "--explain",
                     str(heat)])
    err = capsys.readouterr().err
    assert code == 2 and "coco-yesno has no explain(): drop --explain" in err and not heat.exists()
