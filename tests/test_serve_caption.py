"""POST /v1/caption: a captioner served beside the index's embedding model."""

import base64

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import registry  # noqa: E402
from polymodal.models.captioner import Captioner, CaptionerConfig  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_web_page import _page, _serving, browser_tools  # noqa: E402,F401 - browser_tools is a fixture


class _Recording(Captioner):
    """A fresh captioner that records the beam each call asked for."""

    beams: list = []

    def caption(self, images, beam=3, max_tokens=20, batch_size=16):
        self.beams.append(beam)
        return super().caption(images, beam=beam, max_tokens=4, batch_size=batch_size)


@pytest.fixture(scope="module")
def captioner():
    torch.manual_seed(0)
    return _Recording(CaptionerConfig())


def _file(gallery, name):
    return ("image", (f"{name}.jpg", (gallery / f"{name}.jpg").read_bytes(), "image/jpeg"))


def test_caption_endpoint_writes_one_caption_per_image(lite, db, gallery, captioner):
    with TestClient(create_app(lite, db, caption_model=captioner)) as client:
        assert client.get("/v1/info").json()["model"]["caption_model"] == captioner.key
        r = client.post("/v1/caption", files=[_file(gallery, "cat"), _file(gallery, "coffee")], data={"beam": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == captioner.key
        assert [x["image"] for x in body["results"]] == ["cat.jpg", "coffee.jpg"]
        assert all(isinstance(x["caption"], str) for x in body["results"])
        assert captioner.beams[-1] == 2
        b64 = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
        r = client.post("/v1/caption", json={"images": [b64]})
        assert r.status_code == 200 and len(r.json()["results"]) == 1 and captioner.beams[-1] == 3
        for bad, status, words in (({"image": b64, "beam": 9}, 400, "beam must be between 1 and 5"),
                                   ({"image": b64, "beam": "wide"}, 400, "beam must be a whole number"),
                                   ({"image": b64, "question": "x"}, 400, "unknown field"),
                                   ({}, 400, "no image"),
                                   ({"image": base64.b64encode(b"not an image").decode()}, 400, "")):
            r = client.post("/v1/caption", json=bad)
            assert r.status_code == status and words in r.json()["error"], (bad, r.text)
        assert client.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200  # lite still searches


def test_a_captioner_given_as_the_model_captions_while_the_index_model_searches(lite, db, gallery, captioner,
                                                                                monkeypatch):
    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    with TestClient(create_app(captioner, db)) as client:
        info = client.get("/v1/info").json()["model"]
        assert info["name"] == "lite" and info["caption_model"] == captioner.key
        assert client.post("/v1/caption", files=[_file(gallery, "cat")]).status_code == 200


def test_without_a_captioner_the_endpoint_says_how_to_start_one(lite, db):
    with TestClient(create_app(lite, db)) as client:
        r = client.post("/v1/caption", json={"image": "aGVsbG8="})
        assert r.status_code == 404 and "--caption-model captioner" in r.json()["error"]
        assert client.get("/v1/info").json()["model"]["caption_model"] is None


def test_a_model_that_cannot_caption_is_refused_at_start(lite, db):
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="does not write captions"):
        create_app(lite, db, caption_model=lite)


def test_page_captions_an_uploaded_photo(browser_tools, lite, db, gallery, captioner, tmp_path):  # noqa: F811
    with _serving(create_app(lite, db, caption_model=captioner)) as url, _page(browser_tools, tmp_path) as page:
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#caption", state="visible", timeout=20_000)
        page.set_input_files("#caption-file", str(gallery / "cat.jpg"))
        page.click("#caption-form button")
        page.wait_for_function("!document.getElementById('caption-text').textContent.includes('writing')", timeout=20_000)
        assert page.inner_text("#caption-text") == captioner.caption(str(gallery / "cat.jpg"))[0]
        assert page.errors == []



def test_a_request_whose_images_decode_to_too_many_pixels_is_refused(lite, db, captioner):
    from io import BytesIO

    from PIL import Image

    from polymodal.serve.limits import ServeSettings

    buf = BytesIO()
    Image.new("RGB", (1000, 1000), (120, 30, 200)).save(buf, "PNG")  # a PNG decodes whole: 1 MP each
    png = ("image", ("flat.png", buf.getvalue(), "image/png"))
    settings = ServeSettings(max_request_pixels=2_500_000)
    with TestClient(create_app(lite, db, caption_model=captioner, settings=settings)) as client:
        assert client.post("/v1/caption", files=[png, png]).status_code == 200
        r = client.post("/v1/caption", files=[png, png, png])
        assert r.status_code == 413, r.text
        assert r.json()["error"].startswith("the first 3 images of this request decode to 3,000,000 pixels; the limit "
                                            "is 2,500,000 (2.5 MP) per request")


def test_the_caption_endpoint_takes_a_model_field_naming_its_captioner(lite, db, gallery, captioner):
    with TestClient(create_app(lite, db, caption_model=captioner)) as client:
        r = client.post("/v1/caption", files=[_file(gallery, "cat")], data={"model": captioner.name})
        assert r.status_code == 200, r.text
        b64 = base64.b64encode((gallery / "cat.jpg").read_bytes()).decode()
        assert client.post("/v1/caption", json={"image": b64, "model": captioner.key}).status_code == 200
        r = client.post("/v1/caption", json={"image": b64, "model": lite.name})
        assert r.status_code == 400 and f"model {lite.name!r} answers the embedding endpoints" in r.json()["error"]
        r = client.post("/v1/search", json={"text": "a cat", "model": captioner.name})
        assert r.status_code == 400 and "answers /v1/caption on this server" in r.json()["error"]
        r = client.post("/v1/caption", json={"image": b64, "model": "nope"})
        assert r.status_code == 400 and "start a server with --caption-model nope" in r.json()["error"]
