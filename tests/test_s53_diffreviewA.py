"""Review of stop 53's own changes (helper diffreviewA): each test fails without its fix."""

import os
import shutil

import numpy as np
import pytest

from polymodal.index import ImageIndex, IndexBusy


@pytest.fixture
def db_copy(db, tmp_path):
    """A private copy of the module's index (the test damages it)."""
    shutil.copytree(db, tmp_path / "db")
    return tmp_path / "db"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_an_index_made_before_a_fork_still_writes_in_the_child(tmp_path):
    """ImageIndex keeps one writer-lock object since s53 (writing()); filelock refuses an instance inherited across
    fork, so an index made at import in a multiprocessing (fork) or Celery prefork worker raised RuntimeError on
    every update, where it worked before. The child makes its own lock: it takes the free lock, and still finds one
    its parent holds taken."""
    index = ImageIndex(tmp_path / "db")
    index.db.mkdir()
    with index.writing():
        pass  # the parent has used its lock object

    def in_child(expect_busy: bool) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with index.writing():
                    code = 3 if expect_busy else 0
            except IndexBusy:
                code = 0 if expect_busy else 4
            except BaseException:  # noqa: BLE001 - RuntimeError: "inherited across fork"
                code = 5
            os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_child(expect_busy=False) == 0
    with index.writing():
        assert in_child(expect_busy=True) == 0  # the parent's hold is still seen
    with index.writing():  # and the parent's own lock works on
        pass


def test_removing_from_a_damaged_index_is_the_same_503(lite, db_copy):
    """A damaged meta.sqlite made searches, thumbnails and adds a 503 (IndexDamaged), but a removal a 409 "could not
    remove from the index" (a conflict, as if another writer held it), not logged."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app
    from test_serve import error_of

    with TestClient(create_app(lite, db_copy), raise_server_exceptions=False) as c:
        assert c.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200
        (db_copy / "meta.sqlite").write_bytes(b"not a database" * 100)
        message = error_of(c.post("/v1/index", json={"remove": [1]}), 503)
        assert message.startswith(f"index {db_copy} is damaged"), message


def test_cache_clear_deletes_only_the_files_polymodal_names(tmp_path, monkeypatch, capsys):
    """POLYMODAL_CACHE pointed at a project folder holding its own features/*.npy: `cache info` counted them and
    `cache clear` deleted them. Only polymodal's names (KIND-<hex key>.npy) are the cache's."""
    from polymodal import cli
    from polymodal.cache import cache_dir

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "project"))
    features = cache_dir() / "features"
    features.mkdir(parents=True)
    mine = [features / "clip_vitb32_train.npy", features / "labels-v2.npy", cache_dir() / "conse-classes.npy"]
    for path in mine:
        np.save(path, np.zeros(3))
    cached = features / f"image-{'a' * 20}.npy"
    np.save(cached, np.zeros(3))
    assert cli.main(["cache", "clear"]) == 0
    assert "deleted 1 files" in capsys.readouterr().out
    assert not cached.exists() and all(path.exists() for path in mine)
