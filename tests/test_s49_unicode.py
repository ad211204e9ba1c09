"""Stop 49, users whose data is not plain ASCII English: photos named like a shard member, texts the English text
tower reads as unknown pieces ([UNK]), and wide characters in printed tables."""

import io
import logging

import pytest
from PIL import Image

from polymodal import cli, registry
from polymodal.data.shards import split_tar_ref
from polymodal.training_photos import photo_hash


@pytest.fixture()
def run(lite, monkeypatch, capsys):
    """`polymodal ...` in-process with the session's `lite`, its warn-once flags put back afterwards."""
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    monkeypatch.setattr(lite.text_tower, "_warned_unknown", False, raising=False)

    def _run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_photo_named_like_a_shard_member_is_that_file(tmp_path):
    """"x.tar#1.jpg" was read as member 1.jpg of a tar x.tar: `eval vqa` (whose rows hold paths as text) could not
    hash it, so its seen-in-training count left it out."""
    for name in ("x.tar#1.jpg", "a.parquet#3.jpg"):
        photo = tmp_path / name
        photo.write_bytes(_png())
        assert split_tar_ref(str(photo)) is None
        assert photo_hash(str(photo)) is not None
    assert split_tar_ref(str(tmp_path / "y.tar#1.jpg")) == (tmp_path / "y.tar", "1.jpg")  # a member stays one


def test_a_query_of_unknown_word_pieces_is_warned_of(run, db, caplog):
    """An emoji or Chinese query is [UNK] pieces to MiniLM: every such query ranked the photos alike, silently."""
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        code, out, _ = run("search", "--db", db, "a dog", "-k", "2")
        assert code == 0 and "do not know" not in caplog.text
        code, out, _ = run("search", "--db", db, "一只狗在海滩上奔跑", "-k", "2")
    assert code == 0 and "1 of 1 texts are mostly word pieces the text tower does not know" in caplog.text
    assert "'一只狗在海滩上奔跑': 6 of its 9 pieces are [UNK]" in caplog.text


def test_labels_the_model_cannot_tell_apart_are_warned_of(run, gallery, caplog):
    """--labels 🐶,🐱,🚗 scored 0.333 each on every photo, listed in the order given, with no word why."""
    photo = sorted(gallery.glob("*.jpg"))[0]
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        code, out, _ = run("classify", photo, "--labels", "dog,cat,car")
        assert code == 0 and "cannot tell apart" not in caplog.text
        code, out, _ = run("classify", photo, photo, "--labels", "🐶,🐱,🚗,dog")
    assert code == 0 and "'🐶', '🐱', '🚗'; name them in words it knows" in caplog.text
    assert caplog.text.count("cannot tell apart") == 1  # once, not once per image or batch


def test_tables_align_wide_characters():
    """A Chinese or emoji label took one column per character in the width count but two on the screen."""
    lines = cli._table([("狗", "0.500"), ("汽车", "0.300"), ("dog", "0.200"), ("cafe\u0301", "0.000")],
                       ("label", "score")).splitlines()
    assert [cli._width(line[: line.index("0.")]) for line in lines[2:]] == [7, 7, 7, 7]
    assert lines[0] == "label  score"


def test_the_server_says_which_labels_it_cannot_tell_apart(lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app(lite, db)) as client:
        image = ("image", ("a.png", _png(), "image/png"))
        r = client.post("/v1/classify", files=[image, ("labels", (None, "🐶,🐱,car"))])
        assert r.status_code == 200 and any("'🐶', '🐱'" in w for w in r.json()["warnings"])
        r = client.post("/v1/classify", files=[image, ("labels", (None, "dog,cat"))])
        assert r.status_code == 200 and r.json()["warnings"] == []


def test_eval_zeroshot_says_why_classes_alike_score_no_hit(caplog):
    """Its ties count as misses (test_s40_zs_ties): top-1 0.0 on emoji classes came with no word why."""
    import numpy as np
    from test_s40_zs_ties import Alike

    from polymodal.eval.zeroshot import zeroshot_accuracy

    with caplog.at_level(logging.WARNING, logger="polymodal"):
        out = zeroshot_accuracy(Alike(), ["a", "b"], ["🐶", "🐱"], image_emb=np.tile([0.6, 0.8], (2, 1)))
    assert out["top1"] == 0.0 and "'🐱', '🐶'; name them in words it knows" in caplog.text
