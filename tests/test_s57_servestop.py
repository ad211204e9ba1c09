"""A command but train exits without collecting torch's heap (stop 57): Python's finalization spent 0.5-1 s on it,
most of the 1.1-1.5 s an idle `polymodal serve` took to stop and ~0.9 s of `polymodal search`. A stop with a
request in flight still waits for it: its answer is sent and its index write committed."""

import re
import subprocess
import sys
import textwrap

import pytest
from conftest import python_script

pytest.importorskip("fastapi")


def test_a_stop_with_an_add_in_flight_answers_and_commits_it_and_skips_the_exit_gc(db, gallery):
    """SIGTERM while an upload is being indexed: the client gets its 200, the photo is in the index, the process
    exits 0, and its heap is frozen when it exits (gc.freeze: finalization's collections pass over it)."""
    import httpx

    from polymodal.index import ImageIndex

    before = ImageIndex(db).info()["count"]
    script = textwrap.dedent(f"""
        import atexit, gc, os, signal, socket, sys, time
        atexit.register(lambda: print("frozen", gc.get_freeze_count(), flush=True))  # registered first: runs last
        import polymodal.cli_serve as cli_serve
        from polymodal.serve.service import Service
        port, bind, index_staged = [], cli_serve._bind, Service._index_staged
        cli_serve._bind = lambda *a: port.append((s := bind(*a)).getsockname()[1]) or s
        def stop_then_index(self, staged):  # the stop comes while the add runs; it goes on once shutdown began
            os.kill(os.getpid(), signal.SIGTERM)
            while True:  # until the server stops listening
                try:
                    socket.create_connection(("127.0.0.1", port[0]), timeout=5).close()
                except OSError:
                    break
                time.sleep(0.02)
            return index_staged(self, staged)
        Service._index_staged = stop_then_index
        from polymodal import cli
        sys.exit(cli.main(["serve", "--db", {str(db)!r}, "--model", "lite", "--port", "0"]))
    """)
    proc = python_script(script)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())[0]
        photo = (gallery / "cat.jpg").read_bytes() + b"\0"  # other bytes than the indexed cat: not a duplicate
        r = httpx.post(url + "/v1/index", files={"image": ("new-cat.jpg", photo, "image/jpeg")}, timeout=60)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert r.status_code == 200 and r.json()["count"] == before + 1, r.text
    assert proc.returncode == 0 and err.strip().endswith("polymodal: server stopped"), err[-2000:]
    assert ImageIndex(db).info()["count"] == before + 1
    assert int(out.split("frozen")[-1]) > 0


@pytest.mark.parametrize("command, frozen", [(["info"], True), (["train", "vqa", "--qa", "missing.jsonl"], False)])
def test_commands_but_train_freeze_the_heap_at_exit(command, frozen, tmp_path):
    """Not train: tensorboard's writer and training's files are closed explicitly, but a run is long enough that
    the second does not matter, and nothing of it is left to chance."""
    script = ("import atexit, gc, sys\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count()))  # registered first: runs last\n"
              "from polymodal import cli\n"
              f"sys.exit(cli.main({command!r}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == (0 if frozen else 2), done.stderr
    assert (int(done.stdout.split("frozen")[-1]) > 0) == frozen, done.stdout
