"""Review of stop 53's own changes (helper diffreviewB).

- nosniff on every answer (9689e73) made /docs blank where Python's mimetypes reads .js as text/plain (Windows, from
  the registry): Chromium refused to run swagger-ui-bundle.js ("MIME type ('text/plain') is not executable, and strict
  MIME type checking is enabled"); before, it ran. The docs assets are now sent with their own types.
- Copies of coco-yesno saved before base_version was recorded (8d6f58b) by a polymodal that shipped today's weights
  (9d1379a30248) record no base_version either: once `default` is re-shipped they would load under their same key
  and answer from spaces they were not fit on. They are known by their version, as the copies before 69b841c are.
"""

from __future__ import annotations

import json
import mimetypes
import shutil

import pytest

from polymodal.errors import PolymodalError
from polymodal.models.yesno import load_yesno
from polymodal.resources import HERE


def test_docs_assets_keep_their_types_whatever_mimetypes_guesses(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from polymodal.index import ImageIndex
    from polymodal.serve import create_app
    from polymodal.serve.app import swagger_assets
    from test_index import FakeModel, paint

    if swagger_assets() is None:
        pytest.skip("swagger-ui-bundle-v2 is not installed: /docs uses the CDN")
    paint(tmp_path / "photos" / "red.png", "red")
    model, db = FakeModel(), tmp_path / "pics.idx"
    ImageIndex(db).update_folders([tmp_path / "photos"], model, progress=False)
    mimetypes.init()
    was = mimetypes.guess_type("x.js")[0]
    mimetypes.add_type("text/plain", ".js")  # what a registry's HKCR\.js "Content Type" = text/plain gives on Windows
    try:
        with TestClient(create_app(model, db), base_url="http://localhost") as c:
            replies = {n: c.get(f"/docs-assets/{n}") for n in ("swagger-ui-bundle.js", "swagger-ui.css")}
    finally:
        mimetypes.add_type(was or "text/javascript", ".js")
    for name, r in replies.items():
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff", name
    assert replies["swagger-ui-bundle.js"].headers["content-type"].startswith("text/javascript")
    assert replies["swagger-ui.css"].headers["content-type"].startswith("text/css")


def test_a_copy_of_todays_coco_yesno_saved_without_base_version_is_refused_over_another_default(tmp_path):
    folder = tmp_path / "saved-at-8c23dea"  # a copy saved before 8d6f58b: today's weights, no base_version
    shutil.copytree(HERE / "models" / "coco-yesno", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["base_version"]
    (folder / "config.json").write_text(json.dumps(config))
    default_now = json.loads((HERE / "models" / "default" / "config.json").read_text())["version"]
    assert load_yesno(folder).config["base"] == "default"  # today, over the default it was fit on: it loads

    class Reshipped:  # `default` as a later polymodal may ship it
        version = "0123456789ab"

    why = rf"fit over another default \(version {default_now}; this polymodal's is 0123456789ab\)"
    with pytest.raises(PolymodalError, match=why):
        load_yesno(folder, base=Reshipped())
