"""`polymodal serve --hide-paths` (stop 51): answers name files, never where they lie on the server. Every answer of
every endpoint is grepped for the test's folder (its name plays the operator's home: /home/alice/acme-merger/...).
Seconds on a CPU, with the fake colour model of test_index."""

import base64
import os
import shutil

import pytest
from filelock import FileLock
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli, registry  # noqa: E402
from polymodal.data.images import ImageTransform  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402
from test_web_page import _page, _serving, browser_tools  # noqa: E402, F401 - browser_tools is a fixture

def _hide() -> ServeSettings:
    return ServeSettings(hide_paths=True)


class _Answers:
    """A VQA model and a captioner, so that /v1/vqa and /v1/caption answer too."""

    key = name = "spy@0"
    transform = ImageTransform(resize=8, crop=8)

    def answer(self, image, question, choices=None, top_k=3):
        return {"answer": "red", "score": 1.0, "alternatives": [("red", 1.0)]}

    def caption(self, images, beam=3):
        return ["a red square"] * len(images)


@pytest.fixture
def place(tmp_path):
    """tmp/alice/acme-merger/{photos,other}/red.png (two files of one name), blue.png, broken.png (not an image
    once indexed), link.png (a link out of the folders); the index in tmp/alice/pics.idx -> (tmp, db, model)."""
    home = tmp_path / "alice" / "acme-merger"
    for folder in ("photos", "other"):
        paint(home / folder / "red.png", "red")
    paint(home / "photos" / "blue.png", "blue")
    paint(home / "photos" / "broken.png", "green")
    paint(tmp_path / "alice" / "private" / "passport.png", "yellow")
    os.symlink(tmp_path / "alice" / "private" / "passport.png", home / "photos" / "link.png")
    model, db = FakeModel(), tmp_path / "alice" / "pics.idx"
    ImageIndex(db).update_folders([home / "photos", home / "other"], model, progress=False)
    (home / "photos" / "broken.png").write_bytes(b"not an image any more")
    return tmp_path, db, model


def _png(colour) -> bytes:
    import io

    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, "PNG")
    return out.getvalue()


def _no_place_in(answers: dict, *places) -> None:
    places = {str(p) for p in places} | {os.path.realpath(p) for p in places}
    for what, r in answers.items():
        body = r.content.decode("utf-8", "replace")
        assert not any(p in body for p in places), (what, r.status_code, body[:400])


def _hits(c, **query):
    r = c.post("/v1/search", json={"k": 10, **query})
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_no_answer_of_a_local_index_names_a_place_of_the_server(place, monkeypatch):
    tmp, db, model = place
    png, upload = _png((255, 0, 0)), {"image": ("mine.png", _png((0, 0, 250)), "image/png")}
    b64 = base64.b64encode(png).decode()
    spy = _Answers()
    answers = {}
    with TestClient(create_app(model, db, settings=_hide(), vqa_model=spy, caption_model=spy),
                    base_url="http://localhost") as c:
        hits = _hits(c, text="red")
        ids = {h["id"]: h["path"] for h in hits}
        # a name only, as the page shows it; two red.png told apart by their ids
        assert sorted(p for p in ids.values()) == ["blue.png", "broken.png", "link.png", "red.png", "red.png"]
        assert all(h["name"] == h["path"] for h in hits)
        by_name = {h["path"]: h["id"] for h in hits}
        red = hits[0]["id"]
        answers |= {
            "search text": c.post("/v1/search", json={"text": "red"}),
            "search image": c.post("/v1/search", json={"image": b64, "k": 3}),
            "search upload": c.post("/v1/search", files={"image": ("q.png", png, "image/png")}),
            "search like": c.post("/v1/search", json={"like": red}),
            "like 404": c.post("/v1/search", json={"like": 999}),
            "embed texts": c.post("/v1/embed", json={"texts": ["red"]}),
            "embed image": c.post("/v1/embed", files={"image": ("e.png", png, "image/png")}),
            "classify": c.post("/v1/classify", json={"image": b64, "labels": ["red", "blue"], "templates": ["{}"]}),
            "vqa": c.post("/v1/vqa", files={"image": ("v.png", png, "image/png")}, data={"question": "colour?"}),
            "caption": c.post("/v1/caption", json={"image": b64}),
            "info": c.get("/v1/info"),
            "metrics": c.get("/metrics"),
            "page": c.get("/"),
            "docs": c.get("/docs"),
            "openapi": c.get("/openapi.json"),
            "thumb": c.get(hits[0]["thumb"]),
            "thumb unreadable": c.get(f"/v1/thumb/{by_name['broken.png']}"),
            "thumb link out": c.get(f"/v1/thumb/{by_name['link.png']}"),
            "thumb bad id": c.get("/v1/thumb/x"),
            "no endpoint": c.get("/v1/nothing"),
            "index add": c.post("/v1/index", files=upload),
            "index add again": c.post("/v1/index", files=upload),  # skipped: names the id holding it
        }
        with FileLock(str(db / "index.lock")):  # another writer: 409 named the index and its lock file
            answers["index busy"] = c.post("/v1/index", files={"image": ("b.png", _png((1, 2, 3)), "image/png")})
        answers["index remove"] = c.post("/v1/index", json={"remove": [red]})
        answers["thumb removed"] = c.get(f"/v1/thumb/{red}")
        os.remove(tmp / "alice" / "acme-merger" / "photos" / "blue.png")
        answers["thumb gone"] = c.get(f"/v1/thumb/{by_name['blue.png']}")
        svc = c.app.state.service
        monkeypatch.setattr(svc, "writable", False)  # a read-only mount: 405 named the index folder
        answers["read-only"] = c.post("/v1/index", json={"remove": [1]})
        monkeypatch.undo()
        shutil.move(db, tmp / "moved.idx")  # moved away while serving: 503 named it
        answers["index gone"] = c.post("/v1/search", json={"text": "red"})
        answers["info gone"] = c.get("/v1/info")
        shutil.move(tmp / "moved.idx", db)
    statuses = {k: r.status_code for k, r in answers.items()}
    assert statuses == {**{k: 200 for k in answers}, "like 404": 404, "thumb unreadable": 422, "thumb link out": 403,
                        "thumb bad id": 422, "no endpoint": 404, "index busy": 409, "thumb removed": 404,
                        "thumb gone": 404, "read-only": 405, "index gone": 503, "info gone": 503}
    _no_place_in(answers, tmp)
    assert "index <index> is being written" in answers["index busy"].json()["error"]
    assert answers["index add again"].json()["skipped"][0]["id"] == answers["index add"].json()["added"][0]["id"]
    info = answers["info"].json()["index"]
    assert info["where"] == "a local index" and info["paths_hidden"] is True
    assert "hide_paths" not in answers["info"].json()["limits"]


def test_by_default_hits_and_info_keep_the_absolute_paths(place):
    tmp, db, model = place
    with TestClient(create_app(model, db), base_url="http://localhost") as c:
        hits = _hits(c, text="red")
        info = c.get("/v1/info").json()["index"]
    assert {os.path.dirname(h["path"]) for h in hits} == {str(tmp.resolve() / "alice" / "acme-merger" / f)
                                                          for f in ("photos", "other")}
    assert info["where"] == f"index {db.resolve()}" and info["paths_hidden"] is False


def test_a_qdrant_collection_served_names_no_place_either(place):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    tmp, db, model = place
    served = QdrantCollection(str(tmp / "alice" / "qdrant"), "photos")  # local mode: a folder, as a path
    served.push(ImageIndex(db), progress=False)
    with TestClient(create_app(model, served, settings=_hide()), base_url="http://localhost") as c:
        hits = _hits(c, text="red")
        assert sorted(h["path"] for h in hits)[-2:] == ["red.png", "red.png"] and not any("host" in h for h in hits)
        answers = {
            "search": c.post("/v1/search", json={"text": "blue"}),
            "like": c.post("/v1/search", json={"like": hits[0]["id"]}),
            "thumb": c.get(hits[0]["thumb"]),
            "info": c.get("/v1/info"),
            "metrics": c.get("/metrics"),
            "read-only": c.post("/v1/index", json={"remove": [1]}),  # named the --qdrant folder in its command
            "thumb bad id": c.get("/v1/thumb/12"),
        }
        served._client_().delete_collection("photos")
        answers["gone"] = c.post("/v1/search", json={"text": "red"})
    assert {k: r.status_code for k, r in answers.items()} == {
        "search": 200, "like": 200, "thumb": 200, "info": 200, "metrics": 200, "read-only": 405, "thumb bad id": 422,
        "gone": 503}
    _no_place_in(answers, tmp)
    assert answers["info"].json()["index"]["where"] == "Qdrant collection photos"
    assert "--qdrant <qdrant> --collection photos" in answers["read-only"].json()["error"]


def test_cli_serve_hides_paths_only_when_asked(place, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    _, db, model = place
    monkeypatch.setitem(registry.MODELS, "fake", lambda **kw: model)
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(server=self))
    for flags, hidden in (((), False), (("--hide-paths",), True)):
        assert cli.main(["serve", "--db", str(db), "--port", "0", *flags]) == 0
        assert served["server"].config.app.state.service.settings.hide_paths is hidden
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "--hide-paths" in capsys.readouterr().out


def test_the_page_searches_shows_names_and_more_like_this_under_hide_paths(browser_tools, place, tmp_path):
    tmp, db, model = place
    with _serving(create_app(model, db, settings=_hide())) as url, _page(browser_tools, tmp_path / "browser") as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function("$('meta').textContent.includes('images')", timeout=20_000)
        page.fill("#q", "blue")
        page.click("#search-btn")
        page.wait_for_selector("#results .hit", timeout=20_000)
        first = page.locator("#results .hit").first
        assert first.get_attribute("data-name") == "blue.png"
        assert first.locator(".name").get_attribute("title") == "blue.png"  # the tooltip held the path
        page.wait_for_function("document.querySelector('#results .hit img').naturalWidth > 0", timeout=20_000)
        first.locator("button.like").click()  # more like this: by id, the path plays no part
        page.wait_for_function("$('status').textContent.includes('photos like blue.png')", timeout=20_000)
        html = page.content()
        assert page.locator("#results .hit").count() >= 2 and page.errors == []
    assert str(tmp) not in html and os.path.realpath(tmp) not in html
