"""Stop 44 review of the index and the service: remove_ids' argument, hidden files added by path under a synced
folder, a server over an index it cannot write."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex


def _copy(db, tmp_path):
    folder = tmp_path / "copy.idx"
    shutil.copytree(db, folder)
    return ImageIndex(folder)


@pytest.mark.parametrize("ids", ["12", b"12", [3.9], [True], ["3"], None])
def test_remove_ids_refuses_what_is_not_an_integer_id_and_removes_nothing(db, tmp_path, ids):
    # int() read "12" digit by digit (rows 1 and 2 removed) and cut 3.9 down to row 3
    index = _copy(db, tmp_path)
    before = len(index)
    with pytest.raises(PolymodalError, match="integer row ids"):
        index.remove_ids(ids)
    assert len(index) == before


def test_remove_ids_takes_one_id_or_numpy_ids(db, tmp_path, lite):
    index = _copy(db, tmp_path)
    hits = index.search_text(lite, "a red square", k=2)
    assert index.remove_ids(hits[0].id) == {hits[0].id: hits[0].path}  # one id, as remove() takes one path
    assert index.remove_ids(np.array([hits[1].id])) == {hits[1].id: hits[1].path}


def test_a_hidden_file_added_by_path_is_left_alone_by_a_sync_of_its_folder(gallery, lite, tmp_path):
    # the scan skips hidden files and folders; a sync took their rows (made by add()) for deleted files and dropped
    # them, though the README says files added by path are "left alone by folder syncs"
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in gallery.glob("*.jpg"):  # the photos only: other tests write data files into the shared gallery
        shutil.copy(photo, folder)
    first = sorted(folder.iterdir())[0]
    (folder / ".thumbs").mkdir()
    hidden = [folder / ".kept.jpg", folder / ".thumbs" / "kept.jpg"]
    for path in hidden:
        shutil.copy(first, path)
    index = ImageIndex(tmp_path / "db")
    index.add(hidden, lite, progress=False)
    report = index.update(folder, lite, progress=False)
    assert report.removed == 0 and report.added > 0
    visible = report.added
    report = index.update(folder, lite, progress=False)  # a second sync too
    assert report.removed == 0 and report.unchanged == visible
    paths = {h.path for h in index.search_text(lite, "a photo", k=100)}
    assert {str(p) for p in hidden} <= paths
    # a deleted one stays too (the sync never sees hidden files), until --prune
    hidden[0].unlink()
    assert index.update(folder, lite, progress=False).removed == 0
    assert index.prune() == [str(hidden[0])]


_SERVE_READ_ONLY = """
import io, json, sys
from PIL import Image
from starlette.testclient import TestClient
from polymodal.serve import create_app

buf = io.BytesIO()
Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
app = create_app("lite", sys.argv[1])
with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
    add = c.post("/v1/index", files=[("image", ("red.png", buf.getvalue(), "image/png"))])
    remove = c.post("/v1/index", json={"remove": [1]})
    search = c.post("/v1/search", json={"text": "a red square", "k": 2})
    thumb = c.get(search.json()["hits"][0]["thumb"])
    print(json.dumps({"add": [add.status_code, add.json()["error"]], "remove": remove.status_code,
                      "search": search.status_code, "thumb": thumb.status_code,
                      "writable": c.get("/v1/info").json()["index"]["writable"]}))
"""


def test_a_server_over_a_read_only_index_searches_and_refuses_writes_with_405(db, tmp_path):
    """README: an index in a folder you cannot write still serves. Adding or removing through /v1/index was a 500
    (PermissionError / read-only file system), and /v1/info called the index writable, so the page offered uploads."""
    pytest.importorskip("fastapi")
    folder = tmp_path / "ro.idx"
    shutil.copytree(db, folder)
    cmd = [sys.executable, "-c", _SERVE_READ_ONLY, str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if os.geteuid() != 0:  # chmod stops a user; root needs a read-only mount
        os.chmod(folder, 0o555)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        finally:
            os.chmod(folder, 0o755)
    else:
        if not shutil.which("unshare"):
            pytest.skip("needs unshare (util-linux) to mount the index read-only as root")
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        out = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(folder), *cmd], capture_output=True, text=True,
                             timeout=120, env=env)
        if "mount" in out.stderr and out.returncode != 0 and "Traceback" not in out.stderr:
            pytest.skip(f"cannot mount read-only here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["add"][0] == 405 and "cannot write its index" in got["add"][1]
    assert got["remove"] == 405 and got["search"] == 200 and got["thumb"] == 200
    assert got["writable"] is False  # the page hides its "Add images" box
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in db.iterdir())  # nothing written


def test_a_writable_local_index_still_adds(lite, db, tmp_path):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from polymodal.serve import create_app

    folder = tmp_path / "rw.idx"
    shutil.copytree(db, folder)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 30, 200)).save(buf, "PNG")
    with TestClient(create_app(lite, folder)) as c:
        assert c.get("/v1/info").json()["index"]["writable"] is True
        r = c.post("/v1/index", files=[("image", ("blue.png", buf.getvalue(), "image/png"))])
        assert r.status_code == 200 and len(r.json()["added"]) == 1
        hit = r.json()["added"][0]
        assert c.get(hit["thumb"]).status_code == 200
        assert c.post("/v1/index", json={"remove": [hit["id"]]}).json()["removed"] == [hit["id"]]
