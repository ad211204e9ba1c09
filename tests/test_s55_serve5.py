"""Stop 55, `polymodal serve` leftovers: an embedding model served without an index is refused before its slow load;
a server of a Qdrant collection no longer warns that anyone can change its index; the page comes with only the
panels its server serves (an index-less server showed its search box until /v1/info answered); a 409 for another
process's writer lock says to wait longer as the hold goes on (Retry-After 1 throughout had clients retry every
second through a `polymodal index` of minutes)."""

from __future__ import annotations

import json
import logging
import shutil
from html.parser import HTMLParser

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402

PANELS = ("search-form", "drop", "classify", "vqa", "caption", "add")


class _NotLoaded(Exception):
    pass


@pytest.fixture
def no_load(monkeypatch):
    def load(name, **kwargs):
        raise _NotLoaded(name)

    monkeypatch.setattr("polymodal.load", load)


def test_an_embedding_model_without_an_index_is_refused_before_it_loads(no_load, tmp_path, capsys):
    """`serve --model lite` without --db loaded the model (6-12 s) to refuse it; now 2 s, most of it imports."""
    from polymodal.registry import names_an_embedder

    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.json").write_text(json.dumps({"type": "dual_encoder"}))
    export = tmp_path / "export"
    export.mkdir()
    (export / "onnx_config.json").write_text(json.dumps({"type": "onnx_embedding"}))
    for name in ("lite", "default", trained, export):
        with pytest.raises(PolymodalError, match="embeds images for an index: pass --db DB"):
            create_app(name, None)
    assert cli.main(["serve", "--model", "lite", "--port", "0"]) == 2
    assert "lite embeds images for an index" in capsys.readouterr().err
    for name in ("easy-vqa", "coco-yesno", "captioner", "no-such-model", tmp_path / "absent", tmp_path):
        assert not names_an_embedder(name)  # served without an index, or refused by polymodal.load itself


def _shown(html: str) -> list[str]:
    class Panels(HTMLParser):
        shown: list[str] = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if attrs.get("id") in PANELS and "hidden" not in attrs:
                self.shown.append(attrs["id"])

    parser = Panels()
    parser.feed(html)
    return parser.shown


@pytest.fixture
def collection(db, tmp_path):
    pytest.importorskip("qdrant_client")
    from polymodal.index.qdrant import QdrantCollection

    assert cli.main(["index", "--db", str(db), "--qdrant", str(tmp_path / "q"), "--collection", "photos"]) == 0
    return QdrantCollection(str(tmp_path / "q"), "photos")


def test_the_page_comes_with_only_the_panels_its_server_serves(lite, db, easy_vqa, collection):
    for app, panels in [(create_app(None, None, vqa_model=easy_vqa), ["vqa"]),
                        (create_app(lite, collection), ["search-form", "drop", "classify"]),  # read-only: no Add
                        (create_app(lite, db, vqa_model=easy_vqa), ["search-form", "drop", "vqa", "classify", "add"])]:
        with TestClient(app, base_url="http://localhost") as client:
            html = client.get("/").text
        assert _shown(html) == panels
        assert f"let searchable = {json.dumps('drop' in panels)};" in html  # a pasted photo searches only then


def test_a_server_of_a_qdrant_collection_does_not_warn_that_anyone_can_change_it(lite, collection, monkeypatch,
                                                                                    caplog):
    import polymodal.cli_serve as cli_serve

    class _NotRun:
        def run(self, sockets):
            pass

    monkeypatch.setattr(cli_serve, "_announcing_server", lambda uvicorn, config, line: _NotRun())
    monkeypatch.setattr("polymodal.load", lambda name, **kwargs: lite)
    with caplog.at_level(logging.WARNING):
        assert cli.main(["serve", "--qdrant", collection.location, "--collection", "photos", "--host", "0.0.0.0",
                         "--port", "0"]) == 0
    warning = next(r.getMessage() for r in caplog.records if "without --api-key" in r.getMessage())
    assert "anyone who can reach this address can use the index but not change it (" in warning


def test_the_retry_after_of_a_held_writer_lock_grows_with_the_hold(lite, db, gallery, tmp_path, monkeypatch):
    from filelock import FileLock

    from polymodal.serve import busy

    now = [1000.0]

    class Clock:
        @staticmethod
        def monotonic():
            return now[0]

    monkeypatch.setattr(busy, "time", Clock)
    shutil.copytree(db, tmp_path / "db")
    photo = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes() + b"\0s55", "image/jpeg")}  # not indexed yet
    with TestClient(create_app(lite, tmp_path / "db"), base_url="http://localhost") as client:
        lock = FileLock(str(ImageIndex(tmp_path / "db").lock_path))

        def retry_after(after_s: float) -> list:
            now[0] += after_s
            r = client.post("/v1/index", files=photo)
            return [r.status_code, r.headers.get("retry-after")]

        with lock:  # another process's `polymodal index`
            waits = [retry_after(0)[1]]
            while len(waits) < 11:  # a client back as each 409 says
                waits.append(retry_after(int(waits[-1]))[1])
            assert waits == ["1", "1", "1", "2", "2", "4", "6", "8", "12", "15", "15"]  # half the hold, at most 15
            assert retry_after(busy.MAX_S + busy.GRACE_S + 1) == [409, "1"]  # not back in time: another hold
        assert retry_after(1)[0] == 200
        with lock:  # the add above took the lock: a new hold
            assert retry_after(1) == [409, "1"]
