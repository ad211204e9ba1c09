"""Files from someone else (stop 50): a run folder's checkpoint.pt is read without running code its pickle names,
and an index folder received (a tar or zip keeps symlinks, and its rows may name any path) cannot make the server
delete files outside the upload batches it wrote itself. Seconds on a CPU, with a fake model."""

import io
import os
import sqlite3
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from polymodal.train.trainer import read_checkpoint  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402
from test_trainer_loop import _trainer  # noqa: E402

OLD = time.time() - 7200  # past the age at which the server takes an upload batch without rows for a crash's leftover


class _RunsCode:
    """Unpickled, it makes a folder: what any other call (os.system) could be in a checkpoint someone sent."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


# -- checkpoints ----------------------------------------------------------------------------------------------------
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    ran = tmp_path / "ran"
    state = {"step": 4, "epoch": 1, "best": 0.0, "bad_epochs": 0, "extra": _RunsCode(str(ran))}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(PolymodalError, match="holds Python objects a training checkpoint does not") as err:
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert not ran.exists()
    assert "damaged" not in str(err.value)  # it is not damage: copying it again changes nothing


def test_a_model_checkpoint_naming_a_blocked_module_is_not_called_damaged(tmp_path):
    # torch words an os.* call otherwise than an unknown class ("unsupported GLOBAL ... whose module os is blocked"):
    # it was read as "a damaged file or another format", which sends the user to copy it again
    from polymodal.models.clip import read_state_dict

    ran = tmp_path / "ran"
    torch.save({"visual.conv1.weight": _RunsCode(str(ran))}, tmp_path / "model.pt")
    with pytest.raises(PolymodalError, match="holds Python objects besides tensors"):
        read_state_dict(tmp_path / "model.pt")
    assert not ran.exists()


def test_the_trainers_own_checkpoints_still_resume(tmp_path):
    # numpy's RNG state and numpy scalars among the metrics: what a checkpoint holds besides tensors
    def eval_fn(model):
        return {"val/rsum": np.float64(1.0)}

    _trainer(tmp_path, eval_fn=eval_fn, epochs=2).fit()
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2 and state["numpy_rng"][0] == "MT19937"
    resumed = _trainer(tmp_path, eval_fn=eval_fn, epochs=3)
    resumed.fit(resume=True)
    assert resumed.epoch == 3


# -- a served index folder from elsewhere ---------------------------------------------------------------------------
def _index(tmp_path):
    model, db = FakeModel(), tmp_path / "db"
    for colour in ("red", "green", "blue"):
        paint(tmp_path / "photos" / f"{colour}.png", colour)
    ImageIndex(db).update(tmp_path / "photos", model, progress=False)
    return model, db


def _png(rgb) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(out, "PNG")
    return out.getvalue()


def test_a_removal_deletes_the_servers_own_uploads_and_nothing_else(tmp_path):
    model, db = _index(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    outside = [tmp_path / "notes.txt", tmp_path / "elsewhere" / "thesis.txt"]
    for path in outside:
        path.write_text("not an upload")
    (db / "uploads").mkdir()
    linked = "0" * 32  # named as a batch folder, but a link out of the index
    os.symlink(tmp_path / "elsewhere", db / "uploads" / linked)
    con = sqlite3.connect(db / "meta.sqlite")
    ids = [i for (i,) in con.execute("SELECT id FROM images ORDER BY id")]
    con.execute("UPDATE images SET path = ? WHERE id = ?", (f"{db}/uploads/../../notes.txt", ids[0]))
    con.execute("UPDATE images SET path = ? WHERE id = ?", (f"{db}/uploads/{linked}/thesis.txt", ids[1]))
    con.commit()
    con.close()
    with TestClient(create_app(model, db)) as c:
        r = c.post("/v1/index", json={"remove": ids[:2]})
        assert r.status_code == 200 and r.json()["removed"] == ids[:2], r.text
        added = c.post("/v1/index", files=[("image", ("new.png", _png((10, 200, 90)), "image/png"))]).json()["added"]
        (own,) = [p for p in (db / "uploads").glob("*/000-new.png")]
        assert c.post("/v1/index", json={"remove": [added[0]["id"]]}).json()["removed"] == [added[0]["id"]]
    assert [p for p in outside if not p.exists()] == []
    assert not own.exists() and not own.parent.exists()  # its own upload (and its empty batch folder) still go


def test_the_cleanup_at_start_deletes_no_folder_through_a_linked_uploads(tmp_path):
    model, db = _index(tmp_path)
    os.symlink("..", db / "uploads")  # as an index folder received in a tar could hold it
    mine = tmp_path / "taxes"
    mine.mkdir()
    (mine / "2025.txt").write_text("months of work")
    os.utime(mine, (OLD, OLD))
    with TestClient(create_app(model, db)) as c:
        assert c.get("/healthz").status_code == 200
    assert (mine / "2025.txt").exists()


def test_the_cleanup_at_start_still_deletes_an_old_batch_without_rows(tmp_path):
    model, db = _index(tmp_path)
    crashed, other = db / "uploads" / ("ab" * 16), db / "uploads" / "kept-by-hand"
    for folder in (crashed, other):
        folder.mkdir(parents=True)
        (folder / "000-x.png").write_bytes(_png((1, 2, 3)))
        os.utime(folder, (OLD, OLD))
    with TestClient(create_app(model, db)) as c:
        assert c.get("/healthz").status_code == 200
    assert not crashed.exists() and other.exists()  # only folders named as the server names its batches
