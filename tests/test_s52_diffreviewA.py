"""Stop 52, review of the stop's own changes: since a thumbnail's photo is opened before it is checked, (1) a photo
that is now a folder (the photo replaced, a folder named like a photo) was a 500, and each such request left a file
descriptor open (1,200 requests: 300 more; a client asking again and again would run the server out of them), where
it was a 422; (2) a photo swapped for a link to a terminal became the controlling terminal of a server that had none
(systemd's, setsid), whose hangup then ended the server, where the link was refused before any open. Seconds on a
CPU, with a fake model."""

import os

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402
from test_index import FakeModel, paint  # noqa: E402


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's descriptors in /proc")
def test_a_photo_that_is_now_a_folder_is_a_422_and_leaves_no_descriptor_open(tmp_path):
    w = tmp_path.resolve()
    paint(w / "photos" / "red.png", "red")
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
    os.remove(w / "photos" / "red.png")
    os.mkdir(w / "photos" / "red.png")
    with TestClient(create_app(model, w / "db"), base_url="http://localhost", raise_server_exceptions=False) as c:
        url = c.post("/v1/search", json={"text": "red", "k": 1}).json()["hits"][0]["thumb"]
        c.get(url)  # (the first request's own setup may open descriptors for good)
        before = len(os.listdir("/proc/self/fd"))
        answers = [c.get(url) for _ in range(20)]
        assert len(os.listdir("/proc/self/fd")) - before < 5  # was 20 more
    assert {r.status_code for r in answers} == {422}  # was 500
    assert "not a regular file" in answers[0].json()["error"]


# run in its own session with no controlling terminal, as a server under systemd or setsid: the photo swapped for a
# link to a terminal; before stop 52 the link was refused before any open, since then it was opened, then refused
_SESSION_LEADER = """
import os, sys
from pathlib import Path
from fastapi.testclient import TestClient
from polymodal.index import ImageIndex
from polymodal.serve import create_app
from test_index import FakeModel, paint

w = Path(sys.argv[1])
paint(w / "photos" / "red.png", "red")
model = FakeModel()
ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
master, slave = os.openpty()
os.remove(w / "photos" / "red.png")
os.symlink(os.ttyname(slave), w / "photos" / "red.png")
os.close(slave)
with TestClient(create_app(model, w / "db"), base_url="http://localhost") as c:
    print(c.get(c.post("/v1/search", json={"text": "red", "k": 1}).json()["hits"][0]["thumb"]).status_code)
try:
    os.close(os.open("/dev/tty", os.O_RDONLY))
    print("has a terminal")
except OSError:
    print("no terminal")
"""


@pytest.mark.skipif(not hasattr(os, "openpty") or not os.path.exists("/dev/tty"), reason="no terminals here")
def test_a_photo_swapped_for_a_link_to_a_terminal_does_not_become_the_servers_terminal(tmp_path):
    """It did: the terminal's hangup then sent the server SIGHUP, which ended it."""
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests,
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SESSION_LEADER, str(tmp_path.resolve())], capture_output=True,
                          text=True, timeout=120, start_new_session=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["422", "no", "terminal"], done.stdout  # was "has a terminal"


def test_a_photo_swapped_for_a_link_to_a_device_is_refused_without_opening_it(tmp_path, monkeypatch):
    """Opening some devices acts (a watchdog arms, a tape rewinds): a link to one is refused on its stat, unopened."""
    w = tmp_path.resolve()
    paint(w / "photos" / "red.png", "red")
    model = FakeModel()
    ImageIndex(w / "db").update_folders([w / "photos"], model, progress=False)
    os.remove(w / "photos" / "red.png")
    os.symlink(os.devnull, w / "photos" / "red.png")
    opened, real_open = [], os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(os.fspath(path)) or real_open(path, *a, **k))
    with TestClient(create_app(model, w / "db"), base_url="http://localhost", raise_server_exceptions=False) as c:
        answer = c.get(c.post("/v1/search", json={"text": "red", "k": 1}).json()["hits"][0]["thumb"])
    assert answer.status_code == 422 and "not a regular file" in answer.json()["error"]
    assert str(w / "photos" / "red.png") not in opened  # was opened, then refused
