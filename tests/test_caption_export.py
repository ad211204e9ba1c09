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
    (root / "val.jsonl").write_text("".join(json.dumps({"image": f"{c}.png", "caption": t}) + "\n"
                                            for c, t in zip(COLOURS, written)))
    (root / "written.json").write_text(json.dumps(written))
    (root / "served.json").write_text(json.dumps(model.caption(root / "red.png")))  # the server's defaults
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", "onnx", str(root / "cap"), "--out", str(root / "onnx"), "--val-pairs",
                     str(root / "val.jsonl"), "--json"]) == 0
    return root


def test_export_writes_a_parity_checked_report_and_captions_without_torch(exported, capsys):
    out = exported / "onnx"
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["same_captions"] == 1.0 and report["parity"]["min_first_step_logit_cosine"] >= 0.999
    assert report["photos"] == 2 and report["photos_per_s"]["onnx"] > 0
    assert {"prefix.onnx", "step.onnx", "tokenizer.json", "onnx_config.json"} <= {p.name for p in out.iterdir()}
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


def test_captioner_exports_have_no_variants_yet(exported, capsys):
    assert main(["export", "onnx", str(exported / "cap"), "--out", str(exported / "x"), "--variants",
                 "int8_dynamic"]) == 2
    err = capsys.readouterr().err
    assert "no int8/bf16 variants" in err and "Traceback" not in err
    assert not (exported / "x").exists()
