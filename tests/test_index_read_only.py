"""An index in a folder this process cannot write (a read-only mount, a colleague's index) still searches: SQLite's
WAL mode would otherwise refuse to open it ("not a readable index ... use a new --db")."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from polymodal.index import ImageIndex

_READ = """
import json, sys
import numpy as np
from polymodal.index import ImageIndex
index = ImageIndex(sys.argv[1])
hits = index.search(np.load(sys.argv[2]), k=3)[0]
print(json.dumps({"count": index.info()["count"], "exists": index.exists(), "paths": [h.path for h in hits]}))
"""


def _run_read_only(folder, *args) -> subprocess.CompletedProcess:
    """Run python with `folder` read-only: a private read-only bind mount as root (chmod does not stop root),
    the folder's write bits cleared otherwise."""
    cmd = [sys.executable, "-c", _READ, str(folder), *map(str, args)]
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            os.chmod(folder, 0o755)
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) to mount the index read-only as root")
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    out = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(folder), *cmd], capture_output=True, text=True,
                         timeout=120)
    if "mount" in out.stderr and out.returncode != 0 and "Traceback" not in out.stderr:
        pytest.skip(f"cannot mount read-only here: {out.stderr.strip()[:200]}")
    return out


def test_a_read_only_index_searches_like_the_writable_one(db, lite, tmp_path):
    folder = tmp_path / "ro.idx"
    shutil.copytree(db, folder)
    query = tmp_path / "query.npy"
    np.save(query, lite.encode_text(["a red square"]))
    expected = [h.path for h in ImageIndex(db).search(np.load(query), k=3)[0]]
    out = _run_read_only(folder, query)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"count": len(ImageIndex(db)), "exists": True, "paths": expected}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in db.iterdir())  # nothing written
