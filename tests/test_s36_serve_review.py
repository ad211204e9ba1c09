"""What a review of the HTTP service found (stop 36): --root-path behind a proxy, phone photos (MPO, 200 MP JPEGs),
settings that are not finite, thumbnails of a rebuilt index, removal by id, made-up HTTP methods in the metrics, the
ONNX VQA runtime's cut-question warning and --threads reaching the captioner."""

import asyncio
import io
import logging
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import ServeSettings, create_app  # noqa: E402
from polymodal.serve.batching import MicroBatcher  # noqa: E402
from polymodal.serve.limits import ApiError, image_suffix, open_image_checked  # noqa: E402
from polymodal.serve.middleware import LimitsMiddleware, route_path  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402

KEY = "s3cret"


# -- behind a proxy that strips --root-path: uvicorn puts it back in front of scope["path"] --------------------------
def test_route_path_strips_the_root_path_as_the_router_does():
    assert route_path({"path": "/photos/healthz", "root_path": "/photos"}) == "/healthz"
    assert route_path({"path": "/photos", "root_path": "/photos"}) == "/"
    assert route_path({"path": "/photosx/healthz", "root_path": "/photos"}) == "/photosx/healthz"  # not a prefix
    assert route_path({"path": "/healthz", "root_path": "/photos"}) == "/healthz"  # as TestClient sends it
    assert route_path({"path": "/healthz"}) == "/healthz"


def test_open_paths_stay_open_under_a_root_path(lite, db):
    with TestClient(create_app(lite, db, api_key=KEY), root_path="/photos") as c:
        for path in ("/photos/healthz", "/photos/", "/photos/docs", "/photos/openapi.json"):
            assert c.get(path).status_code == 200, path
        r = c.post("/photos/v1/search", json={"text": "a cat"})
        assert r.status_code == 401 and "missing API key" in r.json()["error"]
        r = c.post("/photos/v1/search", json={"text": "a cat"}, headers={"X-API-Key": KEY})
        assert r.status_code == 200 and r.json()["hits"][0]["thumb"].startswith("/photos/v1/thumb/")


def _run_slow_app(path: str, root_path: str) -> int:
    """LimitsMiddleware (0.05 s deadline, /v1/index exempt) over an app that takes 0.2 s: the status answered."""
    sent = []

    async def app(scope, receive, send):
        await receive()
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "root_path": root_path, "headers": []}
    middleware = LimitsMiddleware(app, max_body_bytes=100, timeout_s=0.05, no_deadline=("/v1/index",))
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"]


def test_index_adds_keep_their_deadline_exemption_under_a_root_path():
    assert _run_slow_app("/photos/v1/index", "/photos") == 200  # was 503 while the add went on and committed
    assert _run_slow_app("/photos/v1/search", "/photos") == 503
    assert _run_slow_app("/v1/index", "") == 200


# -- metrics -------------------------------------------------------------------------------------------------------
def test_made_up_http_methods_share_one_metrics_series(client_app):
    c = client_app
    for i in range(3):
        c.request(f"X{i}", "/healthz")
    text = c.get("/metrics").text
    assert 'method="X0"' not in text and 'method="other"' in text


@pytest.fixture()
def client_app(lite, db):
    with TestClient(create_app(lite, db)) as c:
        yield c


# -- phone photos ---------------------------------------------------------------------------------------------------
def mpo_bytes() -> bytes:
    """A multi-picture JPEG (phones' and 3D cameras' .jpg), which Pillow opens as format MPO."""
    out = io.BytesIO()
    first, second = Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (64, 48), (30, 30, 200))
    first.save(out, "MPO", save_all=True, append_images=[second])
    return out.getvalue()


def test_a_multi_picture_jpeg_is_added_as_a_jpg(lite, db, tmp_path):
    data = mpo_bytes()
    assert Image.open(io.BytesIO(data)).format == "MPO" and image_suffix(data) == ".jpg"
    shutil.copytree(db, tmp_path / "db")
    with TestClient(create_app(lite, tmp_path / "db")) as c:
        r = c.post("/v1/index", files=[("image", ("phone.jpg", data, "image/jpeg"))])
        assert r.status_code == 200, r.text  # was 500 (KeyError 'MPO')
        added = r.json()["added"]
        assert [a["upload"] for a in added] == ["phone.jpg"] and c.get(added[0]["thumb"]).status_code == 200


def big_jpeg(path=None) -> bytes:
    """A real 200 MP JPEG (a phone's 16320x12240 mode), past Pillow's 179 MP limit; grey, so it is quick to write."""
    out = io.BytesIO()
    Image.new("L", (16320, 12240), 128).save(out, "JPEG", quality=50)
    if path is not None:
        path.write_bytes(out.getvalue())
    return out.getvalue()


def test_a_200_megapixel_phone_photo_decodes_at_reduced_scale(lite, tmp_path):
    from polymodal.data.images import check_image_file, load_image

    (tmp_path / "phone").mkdir()
    data = big_jpeg(tmp_path / "phone" / "big.jpg")
    img = open_image_checked(data, 40_000_000, "big.jpg", min_size=256)
    assert img.size == (2040, 1530) and img.mode == "RGB"  # 1/8 scale: 3 MP held, not 200
    assert load_image(data, min_size=256).size == (2040, 1530)
    assert load_image(tmp_path / "phone" / "big.jpg", min_size=256).size == (2040, 1530)
    with pytest.raises(PolymodalError, match="larger than Pillow decodes safely"):
        load_image(data)  # a full-size decode (CLIP checkpoints' exact pixels) is still refused
    with pytest.raises(ApiError) as refused:
        open_image_checked(data, 40_000_000, "big.jpg")
    assert refused.value.status == 413
    check_image_file(tmp_path / "phone" / "big.jpg")  # `polymodal caption` / `vqa` check it before loading
    # indexed, uploaded and thumbnailed like any photo
    db = tmp_path / "db"
    assert ImageIndex(db).update(tmp_path / "phone", lite, progress=False).added == 1
    with TestClient(create_app(lite, db)) as c:
        hit = c.post("/v1/search", json={"text": "grey", "k": 1}).json()["hits"][0]
        thumb = c.get(hit["thumb"])
        added = c.post("/v1/index", files=[("image", ("phone.jpg", data + b"\0", "image/jpeg"))])
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 256
    assert added.status_code == 200 and [a["upload"] for a in added.json()["added"]] == ["phone.jpg"], added.text


def test_a_png_past_pillows_limit_is_still_refused(tmp_path, monkeypatch):
    import builtins

    from polymodal.data.images import load_image

    png = io.BytesIO()
    Image.new("1", (15000, 13000)).save(png, "PNG")  # 195 MP of 1-bit pixels: small to write, no draft for PNG
    with pytest.raises(ApiError) as refused:
        open_image_checked(png.getvalue(), 40_000_000, "scan.png", min_size=256)
    assert refused.value.status == 413 and "195,000,000 pixels" in refused.value.message
    (tmp_path / "scan.png").write_bytes(png.getvalue())
    reads, real_open = [], builtins.open

    def counting_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        if str(args[0]).endswith("scan.png"):
            real_read = f.read
            f.read = lambda n=-1: reads.append(n) or real_read(n)
        return f

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # what Path.read_bytes opens with
    with pytest.raises(PolymodalError, match="larger than Pillow decodes safely"):
        load_image(tmp_path / "scan.png", min_size=256)
    assert -1 not in reads  # a PNG is refused from its first bytes, never read whole into memory


# -- settings that are not finite numbers ------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["max_wait_ms", "request_timeout_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_serve_settings_refuse_nan_and_infinity(key, value):
    with pytest.raises(PolymodalError, match=f"serve setting {key} must be a positive number"):
        ServeSettings(**{key: value})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_the_batcher_refuses_a_wait_that_is_not_finite(value):
    with pytest.raises(PolymodalError, match="max_wait_ms"):
        MicroBatcher(FakeModel(), max_wait_ms=value)


@pytest.mark.parametrize("args, message", [
    (["--max-wait-ms", "nan"], "--max-wait-ms a finite number from 0, got 8, nan"),
    (["--max-wait-ms", "inf"], "--max-wait-ms a finite number from 0, got 8, inf"),
    (["--timeout", "inf"], "--timeout must be a finite number of seconds over 0, got inf"),
    (["--timeout", "nan"], "--timeout must be a finite number of seconds over 0, got nan"),
])
def test_serve_refuses_options_that_are_not_finite(db, capsys, args, message):
    assert cli.main(["serve", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# -- thumbnails and removal ------------------------------------------------------------------------------------------
def test_a_rebuilt_index_never_shows_the_old_photos_thumbnails(tmp_path):
    model, db = FakeModel(), tmp_path / "db"
    ImageIndex(db).update(paint(tmp_path / "a" / "red.png", "red").parent, model, progress=False)
    with TestClient(create_app(model, db)) as c:
        old = c.post("/v1/search", json={"text": "red", "k": 1}).json()["hits"][0]
        old_thumb = c.get(old["thumb"]).content
        shutil.rmtree(db)  # rebuilt in place while serving (same model): ids start again at 1
        ImageIndex(db).update(paint(tmp_path / "b" / "blue.png", "blue").parent, model, progress=False)
        new = c.post("/v1/search", json={"text": "blue", "k": 1}).json()["hits"][0]
        assert new["id"] == old["id"] and new["thumb"] != old["thumb"]  # a browser's cached copy is not reused
        new_thumb = c.get(new["thumb"]).content
    pixel = np.asarray(Image.open(io.BytesIO(new_thumb)))[8, 8]
    assert new_thumb != old_thumb and pixel[2] > 200 > pixel[0], pixel  # blue, not the cached red


def test_remove_by_id_drops_the_row_even_when_its_folder_became_a_symlink(lite, gallery, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(gallery, photos)
    db = tmp_path / "db"
    ImageIndex(db).update(photos, lite, progress=False)
    count = len(ImageIndex(db))
    os.rename(photos, tmp_path / "bigger-disk")  # moved to another disk and linked back
    os.symlink(tmp_path / "bigger-disk", photos)
    with TestClient(create_app(lite, db)) as c:
        hit = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]
        r = c.post("/v1/index", json={"remove": [hit["id"], 999_999]}).json()
        assert r == {"removed": [hit["id"]], "not_found": [999_999], "count": count - 1}
        again = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]
    assert again["id"] != hit["id"] and len(ImageIndex(db)) == count - 1


def test_remove_ids_reports_only_the_rows_that_were_there(tmp_path):
    model, db = FakeModel(), tmp_path / "db"
    ImageIndex(db).update(paint(tmp_path / "p" / "red.png", "red").parent, model, progress=False)
    index = ImageIndex(db)
    (hit,) = index.search_text(model, "red", k=1)
    assert index.remove_ids([hit.id, hit.id, 42]) == {hit.id: hit.path} and len(index) == 0
    assert index.remove_ids([hit.id]) == {}
    with pytest.raises(PolymodalError, match="no index"):
        ImageIndex(tmp_path / "nothing").remove_ids([1])


# -- the ONNX VQA runtime and the captioner --------------------------------------------------------------------------
def test_the_onnx_vqa_runtime_says_when_it_cut_a_question(caplog):
    from polymodal.data.tokenizer import FastTokenizer
    from polymodal.encoders.text import minilm_path
    from test_choices_audit import onnx_fake

    m = onnx_fake({"img": np.array([2.0, 0.5, -1.0], np.float32)})
    m.max_length = 8
    m.tokenizer = FastTokenizer.from_model_folder(minilm_path(), 8)
    with caplog.at_level(logging.WARNING):
        assert m.answer("img", "is it red?")["answer"] == "yes"
        assert "longer than this model reads" not in caplog.text
        m.answer("img", "looking closely at the whole picture and ignoring its background, is it red?")
    assert "word pieces longer than this model reads (max_question_tokens=8); its end was cut off" in caplog.text


def test_threads_reach_an_onnx_captioner(lite, db, monkeypatch):
    import polymodal

    calls = []

    def spy(name, **options):
        calls.append((str(name), options))
        raise SystemExit  # the arguments are what is checked

    monkeypatch.setattr(polymodal, "load", spy)
    with pytest.raises(SystemExit):
        create_app(lite, db, runtime="onnx", caption_model="some/captioner-export", threads=1)
    assert calls == [("some/captioner-export", {"runtime": "onnx", "threads": 1})]


# -- a Qdrant collection replaced while serving ----------------------------------------------------------------------
class OtherSpace:
    """An embedding model of lite's dimension in another space (as `default` beside `lite`: both 384)."""
    name, version, dim, key = "other", "1", 384, "other@1"

    def encode_image(self, images, batch_size=None):
        v = np.random.default_rng(len(images)).normal(size=(len(images), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    encode_text = encode_image


def test_a_collection_pushed_again_from_another_model_is_503_not_mixed_rankings(lite, db, gallery, tmp_path):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    other = tmp_path / "other"
    ImageIndex(other).update(gallery, OtherSpace(), progress=False)
    served = QdrantCollection(str(tmp_path / "q"), "photos")
    served.push(ImageIndex(db), progress=False)
    with TestClient(create_app(lite, served)) as c:
        assert c.post("/v1/search", json={"text": "a cat", "k": 2}).status_code == 200
        served._client_().delete_collection("photos")  # elsewhere: deleted, then pushed from the other index
        pusher = QdrantCollection(str(tmp_path / "q"), "photos")
        pusher._client = served._client  # (local mode lets one client hold the folder)
        pusher.push(ImageIndex(other), progress=False)
        r = c.post("/v1/search", json={"text": "a cat", "k": 2})
        assert r.status_code == 503 and "now holds vectors of model other@1, not lite" in r.json()["error"], r.text


def test_building_an_export_variant_keeps_the_callers_logging_disable_level(tmp_path):
    pytest.importorskip("onnxruntime")
    from polymodal.export.variants import _atomic

    seen = []

    def build(path):
        seen.append(logging.root.manager.disable)
        open(path, "wb").write(b"graph")

    logging.disable(logging.ERROR)  # a program that silenced warnings itself
    try:
        _atomic(build, tmp_path / "graph.onnx")
        assert logging.root.manager.disable == logging.ERROR and seen == [logging.ERROR]
    finally:
        logging.disable(logging.NOTSET)
    _atomic(build, tmp_path / "again.onnx")
    assert logging.root.manager.disable == logging.NOTSET and seen[-1] == logging.WARNING
