"""ONNX export of a captioner: the same captions through onnxruntime without torch, from the CLI and the server."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnxruntime")

from polymodal.cli import main  # noqa: E402
from test_captioner import _photo  # noqa: E402
from conftest import skip_unless_int8_loaded  # noqa: E402

COLOURS = ("red", "blue")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained captioner saved, two photos with what it writes about them, and its export by the CLI (an
    untrained decoder writes long, arbitrary word pieces: a stricter parity check than a fitted one's captions)."""
    import torch

    from polymodal.models.captioner import Captioner, CaptionerConfig

    root = tmp_path_factory.mktemp("caption-onnx")
    torch.manual_seed(0)
    model = Captioner(CaptionerConfig()).eval()
    model.save(root / "cap")
    for colour in COLOURS:
        _photo(colour).save(root / f"{colour}.png")
    written = model.caption([root / f"{c}.png" for c in COLOURS], max_tokens=8)
    (root / "broken.png").write_text("not a photo")  # left out of the checks with a warning, as eval captions does
    (root / "val.jsonl").write_text("".join(json.dumps({"image": f"{c}.png", "caption": t}) + "\n"
                                            for c, t in [*zip(COLOURS, written), ("broken", "a broken photo")]))
    (root / "written.json").write_text(json.dumps(written))
    (root / "served.json").write_text(json.dumps(model.caption(root / "red.png")))  # the server's defaults
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "onnx", str(root / "cap"), "--out", str(root / "onnx"), "--val-pairs",
                     str(root / "val.jsonl"), "--variants", "", "--json"]) == 0
    return root


def test_export_writes_a_parity_checked_report_and_captions_without_torch(exported, capsys):
    out = exported / "onnx"
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["same_captions"] == 1.0 and report["parity"]["min_first_step_logit_cosine"] >= 0.999
    assert report["photos"] == 2 and report["photos_per_s"]["onnx"] > 0  # broken.png left out, not fatal
    assert report["made_with"]["polymodal"] == __import__("polymodal").__version__
    assert {"prefix.onnx", "step.onnx", "tokenizer.json", "onnx_config.json"} <= {p.name for p in out.iterdir()}
    table = (out / "report.md").read_text()  # --variants '': said, not a table of headers only
    assert "No variants were tried" in table and "| graph |" not in table
    script = textwrap.dedent(f"""
        import json, sys
        import polymodal
        m = polymodal.load({str(out)!r}, runtime="onnx")
        caps = m.caption([{str(exported / 'red.png')!r}, {str(exported / 'blue.png')!r}], max_tokens=8)
        print(json.dumps({{"torch": "torch" in sys.modules, "captions": caps}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ})
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    written = json.loads((exported / "written.json").read_text())
    assert got == {"torch": False, "captions": written} and len(written[0].split()) >= 4

    assert main(["caption", str(exported / "blue.png"), "--model", str(out), "--runtime", "onnx",
                 "--max-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() == written[1]


def test_serving_captions_through_the_onnx_export(exported, lite, db):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    out = exported / "onnx"
    with TestClient(create_app(lite, db, runtime="onnx", caption_model=str(out))) as client:
        assert client.get("/v1/info").json()["model"]["caption_model"].startswith("captioner@")
        files = [("image", ("red.png", (exported / "red.png").read_bytes(), "image/png"))]
        r = client.post("/v1/caption", files=files)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["caption"] == json.loads((exported / "served.json").read_text())[0]


def test_captioner_exports_refuse_variants_they_lack(exported, capsys):
    assert main(["export", "onnx", str(exported / "cap"), "--out", str(exported / "x"), "--variants", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "no bf16 variant" in err and "int8_dynamic" in err and "Traceback" not in err
    assert not (exported / "x").exists()


@pytest.fixture(scope="module")
def int8_step(exported, tmp_path_factory):
    """The export's step graph quantized by the int8 builder _try_int8 calls, once for both verdicts (the
    quantizer took ~70% of each test)."""
    from polymodal.export import variants as V

    return V.int8_dynamic(exported / "onnx" / "step.onnx", tmp_path_factory.mktemp("int8-step") / "step.onnx")


def _each_side_once(run, base_run, items, seconds, turns=3, release=None):
    """paired_speed's calls, each once: the int8 graph's and the fp32 graph's captions and their memory releases
    (the gate's verdict is forced, so the timings' figures decide nothing; three timed turns took ~2/3 of a test)."""
    run(), base_run(), [let_go() for let_go in release or ()]
    return 1.0, 1.0


@pytest.mark.parametrize("verdict", ["rejected", "kept"])
def test_the_int8_step_graph_is_served_only_when_the_gate_keeps_it(exported, int8_step, tmp_path, monkeypatch,
                                                                   verdict):
    pytest.importorskip("pycocoevalcap")
    import filecmp
    import shutil

    import polymodal
    import polymodal.export.caption_export as caption_export
    import polymodal.export.onnx_export as onnx_export
    from polymodal.export import variants as V
    from polymodal.export.caption_export import _try_int8
    from polymodal.export.runtime import read_export_config

    out = shutil.copytree(exported / "onnx", tmp_path / "onnx")
    config = read_export_config(out)
    fp32 = polymodal.load(str(out), runtime="onnx")
    photos = [exported / f"{c}.png" for c in COLOURS]
    written = json.loads((exported / "written.json").read_text())
    references = [["a red square"], ["two blue circles"]]
    row = _try_int8(out, config, fp32, photos, references, written, 3, 1.0, 0.05, lambda m: None)
    assert row["status"] == "skipped" and "at least 5 photos" in row["reason"]  # CIDEr-D of 2 photos says nothing
    monkeypatch.setattr(caption_export, "MIN_GATE_PHOTOS", 2)  # two photos keep the test quick
    monkeypatch.setattr(onnx_export, "gate", lambda *a, **k: (verdict, "forced by the test"))
    monkeypatch.setattr(onnx_export, "paired_speed", _each_side_once)

    def built_once(fp32, path, calibration=None):  # the same input graph: the quantizer's output, copied
        assert filecmp.cmp(fp32, exported / "onnx" / "step.onnx", shallow=False)
        return shutil.copyfile(int8_step, path)

    monkeypatch.setattr(V, "int8_dynamic", built_once)
    row = _try_int8(out, config, fp32, photos, references, written, 3, 1.0, 0.05, lambda m: None)
    skip_unless_int8_loaded(row)
    assert row["status"] == verdict and row["variant"] == "int8_dynamic" and "cider" in row
    served = polymodal.load(str(out), runtime="onnx")
    if verdict == "kept":
        assert served.files["step"] == "step.int8_dynamic.onnx" and (out / "step.int8_dynamic.onnx").is_file()
        assert served.variants == {"prefix": "fp32", "step": "int8_dynamic"}  # what serve's banner shows
        assert (out / "step.int8_dynamic.onnx").stat().st_size < (out / "step.onnx").stat().st_size / 2
        rows = []  # int8 scales activations per batch: each photo decodes alone, its captions the same in a batch
        real = served.step.run
        served.step.run = lambda names, feeds, *options: rows.append(len(feeds["ids"])) or real(names, feeds, *options)
        together = served.caption(photos, max_tokens=4)
        assert max(rows) == 3 and together == [served.caption([p], max_tokens=4)[0] for p in photos]
    else:
        assert served.files["step"] == "step.onnx" and not (out / "step.int8_dynamic.onnx").exists()
        assert served.variants == {"prefix": "fp32", "step": "fp32"}


@pytest.mark.parametrize("damage, message", [
    ("prefix.onnx missing", "prefix.onnx is missing"),
    ("prefix.onnx truncated", "prefix.onnx cannot be loaded"),
    ("prefix.onnx is the step graph", "prefix.onnx is not the graph expected there"),
    ("tokenizer.json garbled", "tokenizer.json cannot be read"),
    ("onnx_config.json without transform", "onnx_config.json lacks or garbles 'transform'"),
])
def test_a_damaged_export_is_one_line_that_says_export_again(exported, tmp_path, capsys, damage, message):
    out = tmp_path / "onnx"
    out.mkdir()
    for f in (exported / "onnx").iterdir():  # links: the graphs are large, and only the damaged file is new
        (out / f.name).symlink_to(f)
    name = damage.split()[0]
    (out / name).unlink()
    if damage == "prefix.onnx truncated":
        (out / name).write_bytes((exported / "onnx" / name).read_bytes()[:1000])
    elif damage == "prefix.onnx is the step graph":
        (out / name).symlink_to(exported / "onnx" / "step.onnx")
    elif damage == "tokenizer.json garbled":
        (out / name).write_text("{}")
    elif damage == "onnx_config.json without transform":
        config = json.loads((exported / "onnx" / name).read_text())
        (out / name).write_text(json.dumps({k: v for k, v in config.items() if k != "transform"}))
    assert main(["caption", str(exported / "red.png"), "--model", str(out), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert message in err and "export the model again" in err and "Traceback" not in err
