"""Review of stop 51's serve commits (diffreviewC): /docs served Swagger UI 4 from swagger-ui-bundle 1.x, which cannot
read the OpenAPI 3.1 schema FastAPI writes, so the offline page said only "Unable to render this definition" (seen in
Chromium). Swagger UI 5 (swagger-ui-bundle-v2, the same module) renders it; with only 4 at hand, /docs uses the CDN."""

import sys
import types

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.serve import app as serve_app  # noqa: E402
from polymodal.serve import create_app  # noqa: E402


def _bundle(tmp_path, monkeypatch, versions: tuple, points_at: str):
    """A swagger_ui_bundle module holding vendor/swagger-ui-V for each version, its swagger_ui_path at `points_at`."""
    vendor = tmp_path / "swagger_ui_bundle" / "vendor"
    for version in versions:
        folder = vendor / f"swagger-ui-{version}"
        folder.mkdir(parents=True)
        for name in serve_app.DOCS_FILES:
            (folder / name).write_text(f"/* swagger-ui {version} */")
    module = types.ModuleType("swagger_ui_bundle")
    module.swagger_ui_path = vendor / f"swagger-ui-{points_at}"
    monkeypatch.setitem(sys.modules, "swagger_ui_bundle", module)
    return vendor


def test_swagger_ui_4_is_not_served_for_an_openapi_3_1_schema(tmp_path, monkeypatch, lite, db):
    _bundle(tmp_path, monkeypatch, ("4.15.5",), "4.15.5")
    assert serve_app.swagger_assets() is None
    with TestClient(create_app(lite, db), base_url="http://localhost") as c:
        assert c.get("/openapi.json").json()["openapi"].startswith("3.1")
        docs = c.get("/docs").text
    assert "/docs-assets/" not in docs and "swagger-ui-dist@5" in docs  # FastAPI's CDN links: Swagger UI 5


def test_swagger_ui_5_is_served_whichever_package_wrote_the_module_last(tmp_path, monkeypatch):
    # swagger-ui-bundle 1.x installed after swagger-ui-bundle-v2: its __init__ points at 4.15.5, 5.31.0 is still there
    vendor = _bundle(tmp_path, monkeypatch, ("4.15.5", "5.31.0"), "4.15.5")
    assert serve_app.swagger_assets() == vendor / "swagger-ui-5.31.0"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="BaseException.add_note came in 3.11")
def test_an_update_interrupted_before_its_first_commit_notes_that_nothing_was_saved(tmp_path):
    from polymodal.index import ImageIndex
    from test_index import FakeModel, paint

    for i in range(3):
        paint(tmp_path / "photos" / f"p{i}.png", "red")

    class Stops(FakeModel):
        def encode_image(self, images, *args, **kwargs):
            raise KeyboardInterrupt  # Jupyter's interrupt, before any batch was committed

    with pytest.raises(KeyboardInterrupt) as caught:
        ImageIndex(tmp_path / "db").update(tmp_path / "photos", Stops(), progress=False)
    note = caught.value.__notes__[-1]
    assert "none of the 3 images to embed was saved" in note and "embeds them" in note and "the rest" not in note
