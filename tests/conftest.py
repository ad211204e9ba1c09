import gc
import os
from pathlib import Path

import pytest

# set before torch loads: OpenMP threads that spin while they wait starve the other test worker and the servers
# and subprocesses tests start (benchmarks/omp_wait_policy.py: 2-8x slower beside a busy process)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # Starlette's TestClient calls the server "testserver", a name a keyless polymodal server refuses (it answers
    # names DNS rebinding cannot take: polymodal.serve.hosts); tests address it as a local user does, as localhost
    from starlette import testclient as _testclient

    _testclient.TestClient.__init__.__defaults__ = ("http://localhost", *_testclient.TestClient.__init__.__defaults__[1:])
except ImportError:  # no serve extra: no server tests either
    pass

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; skipped (with the reason) outside CI when absent, a failure under CI=true."""
    path = SHARED_DATA / name
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs the shared data folder {path}")
        pytest.skip(f"shared data {path} not present on this machine")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the test run's derived files (class-prompt matrix) out of the user's cache."""
    os.environ["POLYMODAL_CACHE"] = str(tmp_path_factory.mktemp("polymodal-cache"))


@pytest.fixture(scope="session")
def lite():
    import polymodal

    return polymodal.load("lite")


@pytest.fixture(scope="session")
def gallery(tmp_path_factory):
    from polymodal.data.samples import write_sample_gallery

    folder = tmp_path_factory.mktemp("gallery")
    write_sample_gallery(folder)
    return folder


@pytest.fixture(scope="session")
def easy_vqa():
    import polymodal

    return polymodal.load("easy-vqa")


@pytest.fixture(scope="session")
def coco_yesno():
    import polymodal

    return polymodal.load("coco-yesno")


@pytest.fixture
def young_heap():
    """gc.collect() in the test scans only what was made since it began (gc.freeze): a test that collects to count
    the objects still alive paid 0.5-2.5 s a call to scan the worker's heap of earlier tests' models. Frozen objects
    count as alive, as they are: the dead the test looks for are all made during it."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def _built_db(lite, gallery, tmp_path_factory):
    """The sample gallery indexed with `lite`, once per worker: `db` hands each module a copy (encoding the 15 photos
    took 1.5-5 s, in each of the 54 modules that take `db`). No test is given this one."""
    from polymodal.index import ImageIndex

    path = tmp_path_factory.mktemp("db-built") / "db"
    ImageIndex(path).update(gallery, lite, progress=False)
    return path


@pytest.fixture(scope="module")
def db(_built_db, tmp_path_factory):
    """An index of the sample gallery built with `lite`, one per test module (modules may change theirs): a copy of
    `_built_db` with a uid of its own, as an index built anew has (Qdrant refuses a second index with one's uid)."""
    import contextlib
    import shutil
    import sqlite3
    import uuid

    path = tmp_path_factory.mktemp("db") / "db"
    shutil.copytree(_built_db, path)
    with contextlib.closing(sqlite3.connect(path / "meta.sqlite")) as con, con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'uid'", (uuid.uuid4().hex,))
    return path


def python_script(script: str):
    """`python -c script` with this checkout importable and one OpenMP thread, stdout and stderr piped as text: a
    server a test stops by a signal, with parts of it replaced by the script."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def cli_json(args: list) -> dict:
    """Run the CLI in-process (module-scoped fixtures cannot use capsys); it must exit 0; its last stdout line is
    JSON and is returned."""
    import contextlib
    import io
    import json

    from polymodal import cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main([str(a) for a in args])
    assert code == 0, printed.getvalue()
    return json.loads(printed.getvalue().strip().splitlines()[-1])


def skip_unless_clip_exports() -> None:
    """Skips a test that exports a CLIP checkpoint where this transformers cannot trace it (5.4-5.8: the export
    refuses there with one clear error, which test_onnx checks on any version)."""
    from polymodal.errors import PolymodalError
    from polymodal.models.clip import check_transformers_traces_clip

    try:
        check_transformers_traces_clip()
    except PolymodalError as exc:
        pytest.skip(str(exc))


def skip_unless_int8_loaded(row: dict) -> None:
    """Skips a test of variant selection when this onnxruntime could not load the int8 graph it made (onnxruntime
    1.23, the newest on Python 3.10, has no kernel for some of them; the export then reports the variant as failed
    and serves fp32, which other tests check)."""
    reason = row.get("reason", "")
    if row.get("status") == "failed" and "cannot load this variant's graph" in reason:
        import onnxruntime

        pytest.skip(f"onnxruntime {onnxruntime.__version__} cannot load the {row['variant']} graph: {row['reason']}")


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str, tag: str = "test"):
    """benchmarks/NAME.py loaded as a module (they are scripts, not a package), with its folder on sys.path for the
    helpers they import (run_context, cpu_runtimes)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_benchmark_{tag}_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(str(BENCHMARKS))
    return module


def identity_onnx(path: Path) -> Path:
    """A one-node ONNX graph (y = x, float [1]) saved at path: enough to open an onnxruntime session."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# trainserve (stop 57): a module's page tests share one Chromium, and the torchrun tests one launch (suite time)
@pytest.fixture(scope="module")
def browser():
    """test_web_page.one_chromium, for a module: each page test opens a fresh context with `_tab(browser)`."""
    from test_web_page import one_chromium

    with one_chromium() as chromium:
        yield chromium


@pytest.fixture(scope="session")
def launched(tmp_path_factory):
    """test_distributed.launch_scenarios: the folder of each torchrun scenario, all run in one launch a test run."""
    from test_distributed import launch_scenarios

    return launch_scenarios(tmp_path_factory)


@pytest.fixture
def fresh_cache(lite, tmp_path, monkeypatch):
    """POLYMODAL_CACHE set to a new folder holding only the run's lite class-prompt matrix (a copy: `lite` computes
    its 1,000 prompt embeddings, ~4 s, once per cache folder), for tests of what an empty cache leads to."""
    import shutil

    folder = tmp_path / "cache"
    folder.mkdir()
    for matrix in Path(os.environ["POLYMODAL_CACHE"]).glob("conse-classes-*.npy"):
        shutil.copyfile(matrix, folder / matrix.name)
    monkeypatch.setenv("POLYMODAL_CACHE", str(folder))
    return folder
