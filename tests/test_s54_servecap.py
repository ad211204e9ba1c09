"""Stop 54, serving for captioning and VQA users: `serve` without an index (only --caption-model / --vqa-model), a
/v1/caption reply that says which captions were cut at max_tokens, and /v1/embed's blank and over-long texts."""

import base64
import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.cli import main  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.models.beam_search import caption_batches  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_s54_captionjourney import untrained as _untrained_fixture  # noqa: E402
from test_web_page import _page, _serving, browser_tools as _browser_fixture  # noqa: E402

browser_tools = _browser_fixture  # the fixtures, under their own names
untrained = _untrained_fixture  # a captioner saved untrained: its captions never end, each is cut at max_tokens


@pytest.fixture(scope="module")
def captioner(untrained):
    import polymodal

    return polymodal.load(str(untrained))


def _png(colour=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_server_without_an_index_answers_captions_and_questions_only(captioner, easy_vqa):
    with TestClient(create_app(None, None, caption_model=captioner, vqa_model=easy_vqa)) as client:
        info = client.get("/v1/info").json()
        assert info["index"] is None and info["model"]["name"] is None
        assert info["model"]["caption_model"] == captioner.key and info["model"]["vqa_model"] == easy_vqa.key
        assert client.get("/readyz").status_code == 200 and client.get("/docs").status_code == 200
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "polymodal_queue_depth" in metrics.text
        assert "polymodal_index_images" not in metrics.text
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/caption", "/v1/vqa", "/v1/info"} <= set(paths)
        assert not {"/v1/embed", "/v1/search", "/v1/classify", "/v1/index"} & set(paths)
        for path in ("/v1/embed", "/v1/search", "/v1/classify", "/v1/index"):
            r = client.post(path, json={"texts": ["a dog"]})
            assert r.status_code == 404 and "this server has no index" in r.json()["error"], (path, r.text)
            assert "/v1/vqa and /v1/caption" in r.json()["error"]
        assert client.get("/v1/thumb/1").status_code == 404
        r = client.post("/v1/vqa", json={"image": _png(), "question": "what colour is it?"})
        assert r.status_code == 200 and r.json()["model"] == easy_vqa.key
        assert client.post("/v1/caption", json={"image": _png()}).status_code == 200


def test_an_embedding_model_or_nothing_without_an_index_is_one_error(lite):
    with pytest.raises(PolymodalError, match="embeds images for an index: pass --db DB"):
        create_app(lite, None)
    with pytest.raises(PolymodalError, match="nothing to serve"):
        create_app(None, None)


def test_serve_without_db_announces_what_it_serves(untrained, monkeypatch, capsys):
    import polymodal.cli_serve as cli_serve

    lines = []

    class _NotRun:
        def run(self, sockets):
            pass

    monkeypatch.setattr(cli_serve, "_announcing_server", lambda uvicorn, config, line: lines.append(line) or _NotRun())
    assert main(["serve", "--caption-model", str(untrained), "--port", "0"]) == 0
    assert lines[0].startswith("polymodal: serving captioning with captioner@")
    assert "captioning with captioner@" in lines[0] and "without an index (no search, embed or classify)" in lines[0]
    assert main(["serve", "--port", "0"]) == 2  # nothing named: the message says both ways
    err = capsys.readouterr().err
    assert "pass either --db DB" in err and "--caption-model / --vqa-model" in err and "Traceback" not in err


def test_the_caption_reply_says_which_captions_were_cut(captioner):
    with TestClient(create_app(None, None, caption_model=captioner)) as client:
        r = client.post("/v1/caption", json={"images": [_png(), _png((10, 200, 10))]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["cut"] for x in body["results"]] == [True, True]  # never ends: cut at the server's 20 pieces
        assert body["warnings"] == ["2 of 2 captions reached max_tokens (20 word pieces) before their end and are "
                                    "cut there: where they repeat themselves up to it, train the model longer or on "
                                    "more photos"]
        again = client.post("/v1/caption", json={"image": _png()}).json()  # said in every reply, not once per model
        assert again["results"][0]["cut"] and len(again["warnings"]) == 1
        schema = client.get("/openapi.json").json()["paths"]["/v1/caption"]["post"]["responses"]["200"]
        reply = schema["content"]["application/json"]["schema"]
        assert "warnings" in reply["required"] and "cut" in reply["properties"]["results"]["items"]["properties"]


class _Scripted:
    """A captioner writing the given word pieces: [] is an empty caption, 4 pieces without an end one cut."""

    key = name = "scripted"

    def __init__(self, written):
        self.written = written

    def caption(self, images, beam=3):
        return caption_batches(images, 16, beam, 4, 3, lambda batch, *_: self.written[: len(batch)], str, owner=self)


def test_empty_and_whole_captions_are_told_apart_from_cut_ones():
    from polymodal.serve.app import _captions

    model = _Scripted([[], [5, 6, 7, 8], [5, 6, 7, 1012], [5, 6]])
    photos = [Image.new("RGB", (8, 8))] * 4
    captions, kinds, max_tokens = _captions(model, photos, 1)
    assert kinds == ["empty", "cut", None, None] and max_tokens == 4 and captions[0] == "[]"


def test_embed_refuses_blank_texts_and_notes_cut_ones(lite, db):
    with TestClient(create_app(lite, db)) as client:
        for blank in ("", "   ", "\u200b"):  # as `search` refuses a blank query
            r = client.post("/v1/embed", json={"texts": ["a dog", blank]})
            assert r.status_code == 400 and r.json()["error"] == '"texts"[1] is blank; every text needs some words'
        long = "a dog on a beach " * 100  # 500 words: past the MiniLM tower's 256 tokens
        r = client.post("/v1/embed", json={"texts": ["a dog", long, long]})
        assert r.status_code == 200, r.text
        assert r.json()["warnings"] == ["texts[1], texts[2] reached the text tower's limit of 256 tokens and were "
                                        "cut there: later words do not count; send shorter texts"]
        assert client.post("/v1/embed", json={"texts": ["a dog"]}).json()["warnings"] == []
        r = client.post("/v1/search", json={"text": long, "k": 1})
        assert r.status_code == 200 and r.json()["warnings"][0].startswith("the query reached the text tower's limit")


def test_page_without_an_index_hides_search_and_notes_a_cut_caption(browser_tools, captioner, gallery,
                                                                    tmp_path):
    with _serving(create_app(None, None, caption_model=captioner)) as url, _page(browser_tools, tmp_path) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#caption", state="visible", timeout=20_000)
        for hidden in ("#search-form", "#drop", "#classify", "#add", "#vqa"):
            assert not page.is_visible(hidden), hidden
        assert "no index to search" in page.inner_text("#meta")
        page.set_input_files("#caption-file", str(gallery / "cat.jpg"))
        page.click("#caption-form button")
        page.wait_for_function("document.getElementById('caption-note').textContent !== ''", timeout=20_000)
        assert "reached max_tokens (20 word pieces)" in page.inner_text("#caption-note")
        page.goto(url + "/docs", wait_until="domcontentloaded")  # Swagger UI renders the index-less schema
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        shown = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/caption" in shown and "/v1/search" not in shown
        assert page.errors == []
