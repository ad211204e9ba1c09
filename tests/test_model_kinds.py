"""Embedding models and VQA models are different kinds: a command that needs one refuses the other in one line
(before writing anything); `serve --model easy-vqa` serves /v1/vqa next to the index's own model; zero-shot eval
skips missing images; VQA choices the model cannot score are refused or named; blank queries and top-k 0 refused."""

import json
import logging

import pytest

from polymodal import cli, registry
from polymodal.errors import PolymodalError
from conftest import cli_json


@pytest.fixture(autouse=True)
def loaded(monkeypatch, lite, easy_vqa, coco_yesno):
    """Built-in names give the already-loaded models (each test would otherwise load them again)."""
    for name, model in (("lite", lite), ("easy-vqa", easy_vqa), ("coco-yesno", coco_yesno)):
        monkeypatch.setitem(registry.MODELS, name, lambda model=model, **kw: model)


def fails(capsys, argv, *expected) -> str:
    """The CLI exits 2 with one error line containing every expected string."""
    assert cli.main([str(a) for a in argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and err[0].startswith("polymodal: error: "), err
    assert all(e in err[0] for e in expected), err[0]
    return err[0]


# -- serving a VQA model ----------------------------------------------------------------------------------------
def test_serve_a_vqa_model_next_to_the_index_model(db, lite, easy_vqa, gallery):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import numpy as np
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    with TestClient(create_app("easy-vqa", db)) as c:
        info = c.get("/v1/info").json()["model"]
        assert info["key"] == lite.key and info["vqa"] is True and info["vqa_model"] == easy_vqa.key
        image = ("c.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")
        r = c.post("/v1/vqa", files={"image": image}, data={"question": "what shape is this?"})
        assert r.status_code == 200 and r.json()["model"] == easy_vqa.key
        assert r.json()["answer"] in easy_vqa.answers and r.json()["alternatives"][0] == {"answer": r.json()["answer"], "score": r.json()["score"]}
        r = c.post("/v1/vqa", files={"image": image}, data={"question": "what shape?", "choices": "maybe"})
        assert r.status_code == 400 and "knows none of the choices" in r.json()["error"]
        r = c.post("/v1/search", json={"text": "a cat", "k": 1})  # the index's own model still searches
        assert r.status_code == 200 and r.json()["hits"][0]["name"] == "cat.jpg"
        r = c.post("/v1/embed", json={"texts": ["a cat"]})
        np.testing.assert_allclose(np.array(r.json()["vectors"]), lite.encode_text(["a cat"]), atol=1e-5)
    with pytest.raises(PolymodalError, match="does not answer questions"):
        create_app(lite, db, vqa_model=lite)


def test_cli_serve_with_a_vqa_model_starts(db, easy_vqa, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    async def started(self):  # the server started (and said so); shut down at once instead of serving
        pass

    monkeypatch.setattr(uvicorn.Server, "main_loop", started)
    for name in ("easy-vqa", "coco-yesno"):
        assert cli.main(["serve", "--db", str(db), "--model", name, "--port", "0"]) == 0
        assert f"answering questions with {name}@" in capsys.readouterr().out


# -- one kind check for every command ---------------------------------------------------------------------------
def test_embedding_commands_refuse_vqa_models_before_writing(db, gallery, tmp_path, capsys):
    cant_embed = ("is a VQA model and cannot embed images", "'lite' or 'default'")
    fails(capsys, ["index", gallery, "--db", tmp_path / "vq.idx", "--model", "easy-vqa"], "'easy-vqa'", *cant_embed)
    assert not (tmp_path / "vq.idx").exists()
    fails(capsys, ["classify", gallery / "cat.jpg", "--labels", "a,b", "--model", "easy-vqa"], *cant_embed)
    fails(capsys, ["search", "a cat", "--db", db, "--model", "coco-yesno"], "'coco-yesno'", *cant_embed)
    labels = tmp_path / "l.jsonl"
    labels.write_text("".join(json.dumps({"image": str(gallery / f"{c}.jpg"), "label": c}) + "\n"
                              for c in ("cat", "moon")))
    fails(capsys, ["eval", "zeroshot", "--labels-file", labels, "--model", "coco-yesno"], *cant_embed)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(gallery / f), "caption": f}) + "\n" for f in ("cat.jpg", "moon.jpg")))
    fails(capsys, ["eval", "retrieval", "--pairs", pairs, "--model", "easy-vqa"], *cant_embed)


def test_vqa_commands_refuse_embedding_models(gallery, tmp_path, capsys):
    cant_answer = ("'lite' is an embedding model and does not answer questions", "'easy-vqa' or 'coco-yesno'")
    fails(capsys, ["vqa", gallery / "cat.jpg", "what is it?", "--model", "lite"], *cant_answer)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "question": "what?", "answer": "cat"}) + "\n")
    fails(capsys, ["eval", "vqa", "--qa", qa, "--model", "lite"], *cant_answer)


# -- eval zeroshot skips unusable rows like eval retrieval and eval vqa ------------------------------------------
def test_eval_zeroshot_skips_and_counts_missing_images(gallery, tmp_path, capsys, caplog):
    labels = tmp_path / "l.jsonl"
    rows = [{"image": str(gallery / "cat.jpg"), "label": "cat"}, {"image": "nope.jpg", "label": "dog"},
            {"image": str(gallery / "moon.jpg"), "label": "moon"}]
    labels.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    with caplog.at_level(logging.WARNING):
        result = cli_json(["eval", "zeroshot", "--labels-file", labels, "--model", "lite"])
    assert result["images"] == 2 and result["classes"] == 2
    assert "skipped 2 unusable rows" in caplog.text and "image file not found: nope.jpg" in caplog.text
    capsys.readouterr()  # the first run's embedding bar (stderr)
    labels.write_text(json.dumps({"image": "nope.jpg", "label": "dog"}) + "\n")
    fails(capsys, ["eval", "zeroshot", "--labels-file", labels, "--model", "lite"], "has no usable rows", "1 skipped")


# -- VQA choices the model cannot score ---------------------------------------------------------------------------
def test_vqa_choices_outside_the_vocabulary(easy_vqa, coco_yesno, gallery, capsys, caplog):
    image = gallery / "cat.jpg"
    fails(capsys, ["vqa", image, "is it red?", "--choices", "maybe,perhaps", "--model", "easy-vqa"],
          "knows none of the choices ('maybe', 'perhaps')", "rectangle")
    with caplog.at_level(logging.WARNING):
        mixed = easy_vqa.answer(image, "what colour is it?", choices=["maybe", "red"])
    assert mixed["answer"] == "red" and dict(mixed["alternatives"])["maybe"] == 0.0
    assert "score 0" in caplog.text and "maybe" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the yes/no model: the same rule with its two answers
        mixed = coco_yesno.answer(image, "is it a cat?", choices=["Yes", "maybe"])
    assert mixed["answer"] == "Yes" and "these choices score 0: maybe" in caplog.text
    with pytest.raises(PolymodalError, match="pass yes and/or no"):
        coco_yesno.answer(image, "is it a cat?", choices=["maybe", "perhaps"])


# -- small refusals ------------------------------------------------------------------------------------------------
def test_blank_query_and_top_k_zero_are_refused(db, gallery, capsys):
    for query in ("", "   "):
        fails(capsys, ["search", query, "--db", db], "the text query is empty")
    fails(capsys, ["classify", gallery / "cat.jpg", "--labels", "cat,dog", "--top-k", "0"], "--top-k must be at least 1")
