"""Updating an index in a folder this process cannot write, from Python: one PolymodalError that says why and what to
do, where a bare OSError naming index.lock came out (the CLI printed it as a file-system error)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polymodal.index import ImageIndex
from tests.test_index import FakeModel, paint, photos  # noqa: F401 (fixture)

_UPDATE = """
import sys
sys.path.insert(0, sys.argv[3])
from tests.test_index import FakeModel
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex
try:
    ImageIndex(sys.argv[1]).update(sys.argv[2], FakeModel(), progress=False)
except PolymodalError as exc:
    print("PolymodalError:", exc)
"""


def test_updating_a_read_only_index_from_python_says_what_to_do(tmp_path, photos) -> None:
    db = tmp_path / "db"
    ImageIndex(db).update(photos, FakeModel(), progress=False)
    paint(photos / "white.png", "white")
    cmd = [sys.executable, "-c", _UPDATE, str(db), str(photos), str(Path(__file__).resolve().parent.parent)]
    if os.geteuid() != 0:  # chmod stops anyone but root
        os.chmod(db, 0o555)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            os.chmod(db, 0o755)
    else:  # root: a private read-only bind mount
        if not shutil.which("unshare"):
            pytest.skip("needs unshare (util-linux) to mount the index read-only as root")
        mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        out = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(db), *cmd], capture_output=True, text=True,
                             timeout=120)
        if out.returncode != 0 and "Traceback" not in out.stderr:
            pytest.skip(f"cannot mount read-only here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"PolymodalError: index {db.resolve()} cannot be updated here")
    assert "searches work, updates need a folder you can write" in out.stdout
    assert len(ImageIndex(db)) == 3  # nothing was written
