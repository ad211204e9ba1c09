"""What a deployment walk-through (export, load, serve with both runtimes, index writers beside a server, SIGTERM)
found: each test fails without its fix."""

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import polymodal  # noqa: E402
from polymodal import cli  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.index import ImageIndex  # noqa: E402
from polymodal.serve import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["error"]


@pytest.fixture()
def db_copy(db, tmp_path):
    path = tmp_path / "db"
    shutil.copytree(db, path)
    return path


def test_thumbnail_of_an_image_another_writer_removed_is_404(lite, db_copy):
    """Two servers (or `polymodal index`) on one index: a thumbnail cached before another writer removed the image
    was served forever from the cache; now every request checks the id is still indexed."""
    with TestClient(create_app(lite, db_copy)) as c:
        hit = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]
        assert c.get(hit["thumb"]).status_code == 200  # cached now
        ImageIndex(db_copy).remove([hit["path"]])  # another process's write
        assert "no image with id" in error_of(c.get(hit["thumb"]), 404)


def test_an_index_moved_away_while_serving_is_503_and_not_recreated_by_an_add(lite, db_copy, gallery, tmp_path):
    """The index folder vanishing under a running server was answered 400 (a client error) on searches, and an
    upload to /v1/index quietly started a new one-image index in its place."""
    with TestClient(create_app(lite, db_copy)) as c:
        thumb = c.post("/v1/search", json={"text": "a cat", "k": 1}).json()["hits"][0]["thumb"]
        assert c.get(thumb).status_code == 200
        shutil.move(db_copy, tmp_path / "moved")
        r = c.post("/v1/search", json={"text": "a cat", "k": 1})
        assert "is gone" in error_of(r, 503) and r.headers["retry-after"]
        assert "is gone" in error_of(c.get("/v1/info"), 503)
        assert "is gone" in error_of(c.get(thumb), 503)
        files = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes(), "image/jpeg")}
        assert "is gone" in error_of(c.post("/v1/index", files=files), 503)
        assert "is gone" in error_of(c.post("/v1/index", json={"remove": [1]}), 503)
        assert not ImageIndex(db_copy).exists() and not db_copy.exists()


def test_sigterm_during_an_export_removes_its_staging_folder(tmp_path):
    """`kill`/`timeout`/a service manager stopping `polymodal export onnx` left a hidden .partial folder (tens of MB
    each time): Python's default SIGTERM skips the cleanup that Ctrl-C runs. Now SIGTERM exits 143 after it."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import polymodal
        import polymodal.export.onnx_export as ox
        from polymodal import cli
        polymodal.load = lambda *a, **k: object()
        def export_onnx(model, stage, *a, **k):
            (stage / "image.fp32.onnx").write_bytes(b"0" * 1000)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)
        ox.export_onnx = export_onnx
        sys.exit(cli.main(["export", "onnx", "lite", "--out", {str(out)!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "polymodal: terminated" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .export.*.partial, no half export


def test_export_suggests_a_serve_command_that_parses(lite, tmp_path, monkeypatch):
    """The export ended with `polymodal serve --runtime onnx --model OUT`, which argparse refuses (--db is required)."""
    pytest.importorskip("onnxruntime")
    import polymodal.export.onnx_export as ox

    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)
    monkeypatch.setattr(ox, "export_onnx", lambda model, stage, *a, **k: {})
    monkeypatch.setattr(ox, "report_table", lambda report: "table")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["export", "onnx", "lite", "--out", str(tmp_path / "out")]) == 0
    command = printed.getvalue().split("`")[1]
    argv = shlex.split(command.replace("INDEX", "pics.idx"))
    assert argv[:2] == ["polymodal", "serve"]
    args = cli.build_parser().parse_args(argv[1:])  # SystemExit(2) if a required option is missing
    assert args.model == str((tmp_path / "out"))
    # an export folder runs through onnxruntime by itself (--runtime auto); the Python call needs no runtime either
    assert "--runtime" not in argv and "runtime=" not in printed.getvalue()


def test_export_of_a_builtin_to_its_default_folder_suggests_the_name_with_the_runtime(lite, tmp_path, monkeypatch):
    """`export onnx lite` (no --out) writes where `--model lite --runtime onnx` looks: a name needs the flag (auto
    runs a built-in name through torch)."""
    pytest.importorskip("onnxruntime")
    import polymodal.export.onnx_export as ox

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(polymodal, "load", lambda *a, **k: lite)
    monkeypatch.setattr(ox, "export_onnx", lambda model, stage, *a, **k: {})
    monkeypatch.setattr(ox, "report_table", lambda report: "table")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["export", "onnx", "lite"]) == 0
    argv = shlex.split(printed.getvalue().split("`")[1].replace("INDEX", "pics.idx"))
    args = cli.build_parser().parse_args(argv[1:])
    assert (args.runtime, args.model) == ("onnx", "lite")
    assert "polymodal.load('lite', runtime='onnx')" in printed.getvalue()


@pytest.mark.parametrize("flag, value", [("--timeout", "0"), ("--max-body-mb", "0")])
def test_serve_option_errors_name_the_option(db, flag, value, capsys):
    """`serve --timeout 0` said 'serve setting request_timeout_s must be a positive number' (and --max-body-mb 0
    'max_body_bytes'): names a deployer never typed."""
    assert cli.main(["serve", "--db", str(db), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "_" not in err.split(flag)[0]


def test_threads_help_says_it_applies_to_onnx_too(capsys):
    """`serve --threads` sets onnxruntime's threads too, but its help said only 'torch threads'."""
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "onnxruntime session" in help_text.split("--threads THREADS", 2)[2].split("--max-body-mb")[0]


def test_onnx_load_of_a_path_that_is_no_export_names_it_once(tmp_path):
    """load(PATH, runtime="onnx") said 'no ONNX export of PATH (looked in PATH and PATH); create it with
    `polymodal export onnx PATH`' - the same path twice, and an export command for a path that does not exist."""
    missing = str(tmp_path / "nothing")
    with pytest.raises(PolymodalError) as exc:
        polymodal.load(missing, runtime="onnx")
    assert str(exc.value).count(missing) == 1 and "does not exist" in str(exc.value)
    with pytest.raises(PolymodalError, match="is not an ONNX export"):
        polymodal.load(str(tmp_path), runtime="onnx")
    saved = tmp_path / "model"  # a training run's RUN/model: the fix is to export it
    saved.mkdir()
    (saved / "config.json").write_text('{"type": "dual_encoder"}')
    with pytest.raises(PolymodalError, match=rf"{saved} is a saved model, not its ONNX export; export it with "
                                             rf"`polymodal export onnx {saved} --out DIR`, then pass --model DIR"):
        polymodal.load(str(saved), runtime="onnx")


def test_an_add_while_another_process_writes_is_409_with_retry_after(lite, db_copy, gallery):
    """Another process (a second server, `polymodal index`) holding the writer lock is a passing state: the 409 for an
    add or a remove says when to come back (it had no Retry-After)."""
    from filelock import FileLock

    with TestClient(create_app(lite, db_copy)) as c:
        files = {"image": ("cat.jpg", (gallery / "cat.jpg").read_bytes() + b"\0", "image/jpeg")}  # not indexed yet
        with FileLock(str(ImageIndex(db_copy).lock_path)):
            r = c.post("/v1/index", files=files)
            assert "being written by another process" in error_of(r, 409) and r.headers["retry-after"] == "1"
            r = c.post("/v1/index", json={"remove": [1]})
            assert error_of(r, 409) and r.headers["retry-after"] == "1"
        assert c.post("/v1/index", files=files).status_code == 200  # lock released: the same add goes through


def test_serve_takes_a_vqa_model_beside_the_embedding_model(lite, easy_vqa, db, monkeypatch, capsys):
    """`serve --runtime onnx --model VQA_EXPORT` could only pair the VQA export with the index model's export in the
    default cache folder; --vqa-model names the question answerer while --model stays the embedding model."""
    uvicorn = pytest.importorskip("uvicorn")
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    monkeypatch.setitem(registry.MODELS, "easy-vqa", lambda **kw: easy_vqa)
    served = {}

    async def started(self):  # the server started (and said so); shut down at once instead of serving
        served.update(app=self.config.app)

    monkeypatch.setattr(uvicorn.Server, "main_loop", started)
    assert cli.main(["serve", "--db", str(db), "--port", "0", "--model", "lite", "--vqa-model", "easy-vqa"]) == 0
    svc = served["app"].state.service
    assert svc.model is lite and svc.vqa_model is easy_vqa
    assert "answering questions with" in capsys.readouterr().out
    assert cli.main(["serve", "--db", str(db), "--port", "0", "--vqa-model", "lite"]) == 2  # lite cannot answer
    assert "does not answer questions" in capsys.readouterr().err


def test_an_oversized_upload_is_a_413_without_a_pillow_warning_in_the_server_log():
    """Each image past Pillow's own bomb threshold also printed a DecompressionBombWarning into the server log,
    though the request was already answered 413 from its declared size."""
    import warnings

    from PIL import Image

    from polymodal.serve.limits import ApiError, open_image_checked

    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 MP declared, a few KB on the wire
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ApiError) as exc:
            open_image_checked(buf.getvalue(), max_pixels=40_000_000)
    assert exc.value.status == 413 and "10000x10000" in exc.value.message
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.mark.parametrize("name, stem", [("beach sunset.JPG", "beach_sunset"), ("../../evil.jpg", "evil"),
                                        ("..", "image"), ("", "image"), ("C:\\\\photos\\\\cat.png", "cat"),
                                        ("été à Paris.jpg", "été_à_Paris"), ("x" * 200 + ".jpg", "x" * 60)])
def test_uploads_keep_a_safe_form_of_the_client_name(name, stem):
    """Uploaded images showed up in search results as <32 hex digits>.jpg; now as NNN-<the client's name, made safe>."""
    from polymodal.serve.service import _safe_stem

    assert _safe_stem(name) == stem


def other_model(lite):
    """A model of lite's dimension under another key ("other@1"), embedding every photo alike."""
    import torch

    from polymodal.models.base import EmbeddingModel

    class Other(EmbeddingModel):
        name, version, dim = "other", "1", lite.dim
        transform = lite.transform

        def _image_batch(self, pixels):
            return torch.ones(len(pixels), self.dim)

    return Other()


def test_an_index_rebuilt_with_another_model_while_serving_is_503_not_wrong_answers(lite, db_copy, gallery):
    """The server checked the index's model once, at start: rebuilt under it with another model of the same
    dimension (`default` for `lite`), searches answered 200 with lite queries against default vectors."""
    with TestClient(create_app(lite, db_copy)) as c:
        assert c.post("/v1/search", json={"text": "a cat", "k": 1}).status_code == 200
        shutil.rmtree(db_copy)
        ImageIndex(db_copy).add([gallery / "cat.jpg"], other_model(lite))
        r = c.post("/v1/search", json={"text": "a cat", "k": 1})
        assert "was rebuilt with another model while serving" in error_of(r, 503)
        assert "other@1" in r.json()["error"]
        png = (gallery / "cat.jpg").read_bytes()  # an upload: the same 503, not a 409 "could not add"
        r = c.post("/v1/index", files=[("image", ("new.jpg", png + b"\0", "image/jpeg"))])
        assert "was rebuilt with another model while serving" in error_of(r, 503)
        assert not any((db_copy / "uploads").glob("*/*"))  # the upload's file is not kept


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_by_a_signal_exits_0(db, sig):
    """`systemctl stop` (SIGTERM) or Ctrl-C ended a clean shutdown with 143 / 130, which systemd and Docker count as
    a failed unit: stopping a server is what was asked, so it exits 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "polymodal", "serve", "--db", str(db), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline()  # listening
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert err.strip().endswith("polymodal: server stopped") and "Traceback" not in err


def test_an_address_this_machine_does_not_have_names_the_host_not_the_port():
    from polymodal.cli_serve import _bind

    with pytest.raises(PolymodalError, match=r"cannot listen on 192\.0\.2\.1:0 .*pass a --host address of this machine"):
        _bind("192.0.2.1", 0)  # TEST-NET-1: documentation only, on no interface


@pytest.mark.parametrize("value", ["photos", "/a b", "/x?y", "//"])
def test_a_root_path_that_is_no_url_path_is_refused(db, value, capsys):
    assert cli.main(["serve", "--db", str(db), "--root-path", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--root-path must be a URL path like /photos" in err
