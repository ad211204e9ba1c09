"""More like an indexed photo, and removing one, from the web page (stop 49): `/v1/search {"like": id}` searches with
the photo's stored vector (nothing embedded); a click on a result's photo does that, and its x removes it from the
index (a click did nothing, and a wrong upload was undone only with curl)."""

import shutil

import numpy as np
import pytest

import test_qdrant
from test_index import FakeModel
from test_s44_web import INFO_LOADED
from test_web_page import _serving, _tab

built = test_qdrant.built  # an index of seven colours and an empty local-mode Qdrant collection


@pytest.fixture
def client(lite, db, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    shutil.copytree(db, tmp_path / "db")
    with TestClient(create_app(lite, tmp_path / "db")) as c:
        yield c


def test_search_like_an_indexed_photo_ranks_as_searching_by_its_file(client, gallery):
    by_file = client.post("/v1/search", files={"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes())},
                          data={"k": "4"}).json()["hits"]
    like = client.post("/v1/search", json={"like": by_file[0]["id"], "k": 4})
    assert like.status_code == 200
    hits = like.json()["hits"]
    assert [h["id"] for h in hits] == [h["id"] for h in by_file] and hits[0]["name"] == "cat.jpg"
    np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in by_file], atol=1e-5)
    assert client.post("/v1/search", json={"like": str(hits[1]["id"]), "k": 1}).json()["hits"][0]["id"] == hits[1]["id"]


@pytest.mark.parametrize("body, status, says", [
    ({"like": 987654}, 404, "no image with id 987654"),
    ({"like": "abc"}, 422, "is not a valid integer"),
    ({"like": True}, 400, '"like" must be an image id'),
    ({"like": 1, "text": "a cat"}, 400, 'send one of "text", "image" or "like"'),
])
def test_like_mistakes_are_one_error(client, body, status, says):
    r = client.post("/v1/search", json=body)
    assert r.status_code == status and says in r.json()["error"]


def test_a_collection_gives_its_points_vectors(built):
    _, index, collection = built
    collection.push(index, progress=False)
    hit = collection.search(FakeModel().encode_text(["red"]), 1)[0][0]
    vector = collection.vectors_of([hit.id])[hit.id]
    assert collection.search(vector, 1)[0][0].id == hit.id and collection.vectors_of(["0" * 32]) == {}


def test_the_page_searches_like_a_clicked_photo_and_removes_one(browser, lite, db, tmp_path):
    from polymodal.serve import create_app

    shutil.copytree(db, tmp_path / "db")
    with _serving(create_app(lite, tmp_path / "db")) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.fill("#q", "a cup of coffee")
        page.click("#search-btn")
        page.wait_for_selector("#results .hit", timeout=20_000)
        names = page.eval_on_selector_all("#results .hit", "cards => cards.map((c) => c.dataset.name)")
        page.click(f"#results .hit[data-name='{names[1]}'] button.like")
        page.wait_for_function(f"$('status').textContent.includes('photos like {names[1]}')", timeout=20_000)
        assert page.locator("#results .hit").first.get_attribute("data-name") == names[1]
        page.on("dialog", lambda dialog: dialog.accept())
        page.click(f"#results .hit[data-name='{names[1]}'] button.remove")
        page.wait_for_function("$('status').textContent.startsWith('removed ')", timeout=20_000)
        assert page.locator(f"#results .hit[data-name='{names[1]}']").count() == 0
        assert names[1] not in [h["name"] for h in page.evaluate(
            "() => api('/v1/search', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({text: 'a cup of coffee', k: 50})}).then((r) => r.hits)")]
        assert page.errors == []


def test_the_page_classifies_an_image_by_the_labels_typed(browser, lite, db, gallery, tmp_path):
    """The server answered /v1/classify, but the page offered no way to ask it."""
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.click("#classify-form button")
        assert page.inner_text("#classify-answer") == "choose an image first"
        page.set_input_files("#classify-file", str(gallery / "coffee.jpg"))
        page.fill("#classify-labels", "a cup of coffee, a rocket, a cat")
        page.click("#classify-form button")
        page.wait_for_function("$('classify-answer').textContent.includes('%')", timeout=20_000)
        best, others = page.inner_text("#classify-answer").splitlines()[:2]
        assert best.startswith("a cup of coffee (") and others.startswith("also: ") and "a rocket" in others
        page.fill("#classify-labels", "cat")  # one label: the server's note shows
        page.click("#classify-form button")
        page.wait_for_function("$('classify-answer').textContent.includes('note: with one label')", timeout=20_000)
        assert page.errors == []


def test_a_search_in_words_the_model_does_not_know_says_so(client, browser, lite, db, tmp_path):
    """The text tower warned once in the server log, which an API client or the page never sees."""
    r = client.post("/v1/search", json={"text": "一只狗在海滩上奔跑", "k": 3}).json()
    assert len(r["hits"]) == 3 and "6 of the query's 9 word pieces are unknown" in r["warnings"][0]
    assert client.post("/v1/search", json={"text": "a dog on a beach", "k": 3}).json()["warnings"] == []
    from polymodal.serve import create_app

    with _serving(create_app(lite, db)) as url, _tab(browser) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(INFO_LOADED, timeout=20_000)
        page.fill("#q", "🐶🐶")
        page.click("#search-btn")
        page.wait_for_function("$('status').textContent.includes('note: ')", timeout=20_000)
        assert "word pieces are unknown" in page.inner_text("#status") and page.errors == []
