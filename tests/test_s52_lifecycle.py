"""What running `polymodal serve` under a service manager (stops and restarts on deploys) found: each test fails
without its fix."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import python_script

pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_while_its_models_load_exits_0(db, sig):
    """`systemctl stop` (SIGTERM) or Ctrl-C in the seconds before the "serving" line (the models loading: 3-5 s for
    `lite` here) exited 143 / 130, which systemd counts as a failed unit; a stop once serving already exited 0."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        # Ctrl-C as in a terminal: a shell's background job (a CI runner's) inherits SIGINT ignored, and Python then
        # installs no handler of its own
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import polymodal.serve.app as app
        def create_app(*a, **k):  # the slow part of a start: the signal comes while it runs
            os.kill(os.getpid(), {int(sig)})
            time.sleep(20)
        app.create_app = create_app
        from polymodal import cli
        sys.exit(cli.main(["serve", "--db", {str(db)!r}, "--port", "0"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "polymodal: server stopped"


def test_a_client_that_does_not_read_its_replies_cannot_hold_a_stop(db):
    """SIGTERM waited for every answer to be sent, and a client that stopped reading (replies pipelined into full
    socket buffers) held the process until systemd's SIGKILL 90 s later (measured: still running after 75 s); now
    the drain lasts at most --timeout + DRAIN_GRACE_S. (A stub app stands in for the models: the drain is uvicorn's.)"""
    import socket
    import time

    script = textwrap.dedent(f"""
        import sys, types
        import polymodal.serve.app as app
        from fastapi import FastAPI, Response
        def create_app(*a, **k):
            stub = FastAPI()
            model = types.SimpleNamespace(key="stub")
            stub.state.service = types.SimpleNamespace(model=model, vqa=False, vqa_model=None, caption_model=None)
            stub.get("/big")(lambda: Response(b"x" * (8 << 20)))
            return stub
        app.create_app = create_app
        from polymodal import cli
        sys.exit(cli.main(["serve", "--db", {str(db)!r}, "--port", "0", "--timeout", "1"]))
    """)
    proc = python_script(script)
    try:
        port = int(proc.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)  # and never reads
            time.sleep(0.5)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - start
    finally:
        proc.kill()
    assert proc.returncode == 0 and err.strip().endswith("polymodal: server stopped"), err[-2000:]
    assert took < 12  # --timeout 1 + DRAIN_GRACE_S (5), with room for a busy machine
