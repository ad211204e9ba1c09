"""How the service reads its inputs: JSON lists are taken as given, strings (multipart or JSON) are comma-separated, a field of
the wrong type says which type it wants; VQA answers read well on the page; a timeout says what to do."""

import asyncio
import base64
import logging
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import ServeSettings, create_app  # noqa: E402
from polymodal.serve.middleware import LimitsMiddleware  # noqa: E402
from test_web_page import _serving, _tab  # noqa: E402


class _Asker:
    """lite plus an answer() that records its choices and answers as the VQA models do (a dict)."""

    def __init__(self, model):
        self._model, self.choices = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def answer(self, image, question, choices=None):
        self.choices.append(choices)
        if question.startswith("what"):  # as coco-yesno does for a question it cannot answer
            logging.getLogger("polymodal.models.yesno").warning("answers only yes or no")
        return {"answer": "red", "score": 0.7487, "alternatives": [("red", 0.7487), ("blue", 0.2013)]}


@pytest.fixture(scope="module")
def asker(lite):
    return _Asker(lite)


@pytest.fixture(scope="module")
def client(asker, db):
    with TestClient(create_app(asker, db)) as c:
        yield c


@pytest.fixture(scope="module")
def cat(gallery):
    return (gallery / "cat.jpg").read_bytes()


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert set(response.json()) == {"error"}
    return response.json()["error"]


def test_json_labels_are_taken_as_given_and_form_labels_split_on_commas(client, cat):
    b64 = base64.b64encode(cat).decode()
    r = client.post("/v1/classify", json={"image": b64, "labels": ["Washington, D.C.", "Paris"]})
    assert r.status_code == 200, r.text
    assert sorted(x["label"] for x in r.json()["results"][0]["labels"]) == ["Paris", "Washington, D.C."]
    r = client.post("/v1/classify", files={"image": ("c.jpg", cat, "image/jpeg")}, data={"labels": "cat, dog"})
    assert sorted(x["label"] for x in r.json()["results"][0]["labels"]) == ["cat", "dog"]
    assert "label 1 is empty" in error_of(client.post("/v1/classify", json={"image": b64, "labels": ["cat", " "]}), 400)
    r = client.post("/v1/classify", json={"image": b64, "labels": "cat,dog"})  # one JSON string: comma-separated
    assert sorted(x["label"] for x in r.json()["results"][0]["labels"]) == ["cat", "dog"]
    assert "must be a list" in error_of(client.post("/v1/classify", json={"image": b64, "labels": [1, 2]}), 400)


def test_vqa_reply_has_the_fields_vqa_json_prints(client, asker, cat):
    r = client.post("/v1/vqa", files={"image": ("c.jpg", cat, "image/jpeg")}, data={"question": "is it red?"})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": asker.key, "question": "is it red?", "answer": "red",
                        "score": 0.7487, "warnings": [],
                        "alternatives": [{"answer": "red", "score": 0.7487}, {"answer": "blue", "score": 0.2013}]}


def test_vqa_reply_keeps_its_own_model_and_question_over_the_answers_keys(lite, db, cat):
    class Boastful(_Asker):
        def answer(self, image, question, choices=None):
            return {"answer": "red", "score": 1.0, "alternatives": [("red", 1.0)], "model": "other", "question": "?"}

    with TestClient(create_app(Boastful(lite), db)) as c:
        r = c.post("/v1/vqa", files={"image": ("c.jpg", cat, "image/jpeg")}, data={"question": "is it red?"})
    assert r.status_code == 200, r.text
    assert (r.json()["model"], r.json()["question"], r.json()["answer"]) == (lite.key, "is it red?", "red")


def test_vqa_reply_sends_another_models_own_answer_as_it_is():
    from polymodal.serve.service import vqa_fields

    assert vqa_fields("a red square") == {"answer": "a red square"}
    own = {"answer": "red", "votes": (3, 1)}  # no alternatives: not the VQA models' shape, so left whole
    assert vqa_fields(own) == {"answer": {"answer": "red", "votes": [3, 1]}}
    odd = {"answer": "red", "score": 1.0, "alternatives": ["red"]}
    assert vqa_fields(odd)["answer"] == {"answer": "red", "score": 1.0, "alternatives": ["red"]}


def test_form_choices_split_on_commas_and_json_choices_are_taken_as_given(client, asker, cat):
    image = {"image": ("c.jpg", cat, "image/jpeg")}
    asker.choices.clear()
    assert client.post("/v1/vqa", files=image, data={"question": "colour?", "choices": "red, blue"}).status_code == 200
    assert client.post("/v1/vqa", files=image, data={"question": "colour?", "choices": ""}).status_code == 200
    b64 = base64.b64encode(cat).decode()
    r = client.post("/v1/vqa", json={"image": b64, "question": "where?", "choices": ["Washington, D.C.", "Paris"]})
    assert r.status_code == 200, r.text
    assert asker.choices == [["red", "blue"], None, ["Washington, D.C.", "Paris"]]
    # a JSON string is comma-separated, as for labels; blank choices are refused, as blank labels are
    r = client.post("/v1/vqa", json={"image": b64, "question": "colour?", "choices": "red, blue"})
    assert r.status_code == 200, r.text
    assert asker.choices[-1] == ["red", "blue"]
    assert "choice 1 is empty" in error_of(client.post("/v1/vqa", json={"image": b64, "question": "?", "choices": ["red", " "]}), 400)
    assert "must be a list" in error_of(client.post("/v1/vqa", json={"image": b64, "question": "?", "choices": [True]}), 400)


class _Vqa:
    """A VQA model that cannot embed, served beside lite: each endpoint accepts only its own model's name."""

    name = key = "stub-vqa"

    def answer(self, image, question, choices=None):
        return {"answer": "red", "score": 1.0, "alternatives": [("red", 1.0)]}


def test_model_field_names_the_model_answering_that_endpoint(lite, db, cat):
    b64 = base64.b64encode(cat).decode()
    with TestClient(create_app(lite, db, vqa_model=_Vqa())) as c:
        for path, body in [("/v1/embed", {"texts": ["a dog"]}), ("/v1/search", {"text": "a dog"})]:
            assert c.post(path, json={**body, "model": lite.key}).status_code == 200
            msg = error_of(c.post(path, json={**body, "model": "stub-vqa"}), 400)
            # the VQA model is served here, so the hint is the endpoint, not another server
            assert "'stub-vqa' answers /v1/vqa on this server" in msg and repr(lite.name) in msg
            assert "--model" not in msg
            assert "start a server with --model nope" in error_of(c.post(path, json={**body, "model": "nope"}), 400)
        vqa = {"image": b64, "question": "colour?"}
        assert c.post("/v1/vqa", json={**vqa, "model": "stub-vqa"}).status_code == 200
        msg = error_of(c.post("/v1/vqa", json={**vqa, "model": lite.name}), 400)
        assert f"{lite.name!r} answers the embedding endpoints" in msg and "uses 'stub-vqa'" in msg
        form = {"question": "colour?", "model": "stub-vqa"}
        assert c.post("/v1/vqa", files={"image": ("c.jpg", cat, "image/jpeg")}, data=form).status_code == 200
        assert "answers /v1/vqa" in error_of(c.post("/v1/embed", files={"image": ("c.jpg", cat, "image/jpeg")}, data={"model": "stub-vqa"}), 400)


def test_json_fields_of_the_wrong_type_say_which_type(client, cat):
    b64 = base64.b64encode(cat).decode()
    msg = error_of(client.post("/v1/search", json={"text": ["a"]}), 400)
    assert msg.startswith('"text" must be a string (one query), got a list')
    assert "blank" in error_of(client.post("/v1/search", json={"text": "  "}), 400)
    assert '"question" must be a string' in error_of(client.post("/v1/vqa", json={"image": b64, "question": 5}), 400)
    assert '"image" must be a base64 string (one image), got a list' in error_of(
        client.post("/v1/search", json={"image": [b64]}), 400)
    assert '"images"[1] must be a base64 string' in error_of(client.post("/v1/embed", json={"images": [b64, 5]}), 400)
    assert "top_k must be a whole number" in error_of(
        client.post("/v1/classify", json={"image": b64, "labels": ["cat"], "top_k": "all"}), 400)
    files = {"image": ("c.jpg", cat, "image/jpeg"), "labels": ("l.txt", b"cat", "text/plain")}
    assert "must be text, not a file" in error_of(client.post("/v1/classify", files=files), 400)


def test_timeout_says_what_to_do(lite, db):
    import threading

    app = create_app(lite, db, settings=ServeSettings(request_timeout_s=0.5))
    with TestClient(app) as c:
        gate = threading.Event()
        app.state.service.batcher.submit_call(gate.wait)  # the model thread is busy
        r = c.post("/v1/search", json={"text": "a dog"})
        gate.set()
        msg = error_of(r, 503)
        assert r.headers["retry-after"] == "1"
        assert "longer than 0.5 s" in msg and "retry" in msg and "fewer" in msg and "--timeout" in msg


def test_slow_body_says_what_to_do():
    sent = []

    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    async def receive():
        await asyncio.sleep(5)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embed", "headers": []}
    asyncio.run(LimitsMiddleware(app, max_body_bytes=100, timeout_s=0.05)(scope, receive, send))
    assert sent[0]["status"] == 408 and b"--timeout" in sent[1]["body"]


def test_page_shows_a_vqa_answer_readably(browser, asker, db, gallery, tmp_path):  # noqa: F811
    with _serving(create_app(asker, db)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#vqa", state="visible", timeout=20_000)
        page.set_input_files("#vqa-file", str(gallery / "cat.jpg"))
        page.fill("#vqa-q", "what colour is it?")
        page.click("#vqa-form button")
        page.wait_for_function("!document.getElementById('vqa-answer').textContent.includes('thinking')", timeout=20_000)
        text = page.inner_text("#vqa-answer")
        assert "{" not in text and "red" in text and "75%" in text and "blue" in text and "20%" in text, text
        assert "note: answers only yes or no" in text  # the model's warning, which the CLI shows on stderr
        assert page.errors == []


# the first question's answer comes 1.5 s late and says "stale": it must not replace the second question's answer
STALE_FIRST_ANSWER = """const fetchNow = window.fetch; let asked = 0; window.fetch = (url, opts) => {
  if (!String(url).endsWith("/v1/vqa") || ++asked > 1) return fetchNow(url, opts);
  const stale = new Response(JSON.stringify({answer: "stale", score: 1, alternatives: []}),
                             {headers: {"Content-Type": "application/json"}});
  return new Promise((done) => setTimeout(() => done(stale), 1500));
};"""


def test_page_shows_the_last_questions_answer_not_the_last_to_arrive(browser, asker, db, gallery, tmp_path):  # noqa: F811
    with _serving(create_app(asker, db)) as url, _tab(browser) as page:
        page.add_init_script(STALE_FIRST_ANSWER)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#vqa", state="visible", timeout=20_000)
        page.set_input_files("#vqa-file", str(gallery / "cat.jpg"))
        page.fill("#vqa-q", "what colour is it?")
        page.click("#vqa-form button")
        page.click("#vqa-form button")  # asked again before the first answer came
        page.wait_for_function("document.getElementById('vqa-answer').textContent.includes('red')", timeout=20_000)
        time.sleep(2.0)  # past the first question's late answer
        assert "stale" not in page.inner_text("#vqa-answer") and "red" in page.inner_text("#vqa-answer")
        assert page.errors == []
