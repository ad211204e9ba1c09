"""Stop 56, leftovers: an --explain PNG's strip did not say how its map was made (attention, gradient or occlusion);
`serve --model CLIP_CHECKPOINT` without an index loaded the whole checkpoint (8-20 s) before refusing it; `info
--qdrant` (or --db, --model) printed the built-in models' table before what was asked; the server's log told an
operator to "raise --max-tokens", a flag serve has no; the page's script repeated page.py's panel ids."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal import cli
from polymodal.apps.explain import save_heatmap
from polymodal.apps.heat_scale import MAX_LINES
from polymodal.errors import PolymodalError
from polymodal.fusion import build_fusion
from polymodal.models.beam_search import caption_batches
from test_s55_explain3 import drawn as _drawn_fixture
from test_s55_serve5 import no_load as _no_load_fixture

drawn, no_load = _drawn_fixture, _no_load_fixture  # the fixtures, under their own names


# -- 1. the strip says how the map was made --------------------------------------------------------------------------
def test_vqa_explain_png_names_the_method(easy_vqa, tmp_path, monkeypatch, drawn):
    import polymodal.cli_vqa as cli_vqa

    photo = tmp_path / "shape.png"
    Image.new("RGB", (64, 64), "gray").save(photo)
    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: easy_vqa)
    assert cli.main(["vqa", str(photo), "what shape is in the image?", "--explain", str(tmp_path / "h.png")]) == 0
    assert "Method: gradient relevance" in drawn  # easy-vqa's concat fusion has no attention over the image


def test_search_explain_png_names_occlusion(db, tmp_path, drawn):
    out = tmp_path / "h.png"
    assert cli.main(["search", "a cup of coffee", "--db", str(db), "-k", "1", "--explain", str(out)]) == 0
    assert "Method: occlusion" in drawn


def test_heat_map_method_is_what_explain_does(easy_vqa, monkeypatch):
    """Asked of the fusion: one attending to the image maps attention, one that does not maps gradients."""
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    d, own, grad = easy_vqa.config.dim, easy_vqa.fusion, torch.autograd.grad
    used = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **kw: used.append(1) or grad(*a, **kw))
    try:  # (not monkeypatch: it cannot put back a torch submodule)
        for query, method in ((1, "attention map"), (0, "gradient relevance")):
            easy_vqa.fusion = build_fusion("cross_attention", [d, d], d, query=query)
            assert easy_vqa.heat_map_method == method
            used.clear()
            easy_vqa.explain(Image.new("RGB", (64, 64), "gray"), "what shape is it?")
            assert bool(used) == (method == "gradient relevance")
    finally:
        easy_vqa.fusion = own
    assert easy_vqa.heat_map_method == "gradient relevance"  # its own concat fusion
    assert OnnxFusionEncoder.heat_map_method == "occlusion"


def test_python_method_and_legend_false_unchanged(tmp_path, drawn):
    photo, heat = Image.new("RGB", (400, 300), "gray"), np.eye(7, dtype=np.float32)
    bare = save_heatmap(photo, heat, tmp_path / "bare.png", transform=None, legend=False)
    named = save_heatmap(photo, heat, tmp_path / "named.png", transform=None, legend=False, method="occlusion")
    assert bare.read_bytes() == named.read_bytes() and not drawn
    long = "\n".join(f"line {i}" for i in range(MAX_LINES + 3))  # cut to MAX_LINES: the method line stays
    save_heatmap(photo, heat, tmp_path / "h.png", transform=None, caption=long, method="occlusion")
    assert drawn[MAX_LINES - 1].endswith("...") and drawn[MAX_LINES] == "Method: occlusion"


# -- 2. serve refuses a CLIP checkpoint without an index before loading it ------------------------------------------
def _checkpoints(tmp_path) -> dict:
    """CLIP checkpoints (by config.json, .safetensors header, torch file) and look-alikes that are none."""
    from safetensors.numpy import save_file

    hf, bert = tmp_path / "hf-clip", tmp_path / "hf-bert"
    for folder, kind in ((hf, "clip"), (bert, "bert")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": kind}))
    clip_keys = {"visual.conv1.weight": np.zeros((2, 3, 2, 2), np.float32), "token_embedding.weight": np.zeros(2)}
    save_file(clip_keys, str(tmp_path / "clip.safetensors"))
    save_file({"encoder.weight": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in clip_keys.items()}, tmp_path / "clip.pt")
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    torch.save({"model": {"visual.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pt")  # not a state dict
    one = tmp_path / "one-file"
    one.mkdir()
    (one / "ViT.safetensors").write_bytes((tmp_path / "clip.safetensors").read_bytes())
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 20)
    return {"clip": [hf, tmp_path / "clip.safetensors", tmp_path / "clip.pt", tmp_path / "wrapped.pth", one],
            "other": [bert, tmp_path / "other.safetensors", tmp_path / "other.pt", tmp_path / "broken.safetensors"]}


def test_serve_refuses_a_clip_checkpoint_without_an_index_before_loading_it(no_load, tmp_path, capsys):
    from polymodal.registry import names_an_embedder
    from polymodal.serve import create_app

    found = _checkpoints(tmp_path)
    for path in found["clip"]:
        assert names_an_embedder(path), path
        with pytest.raises(PolymodalError, match="embeds images for an index: pass --db DB"):
            create_app(path, None)  # polymodal.load would raise _NotLoaded
    for path in found["other"]:
        assert not names_an_embedder(path), path  # unknown: loaded (refused by polymodal.load itself) as before
    assert cli.main(["serve", "--model", str(found["clip"][2]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "clip.pt embeds images for an index" in err and "Traceback" not in err


# -- 3. info --qdrant/--db/--model shows what was asked -------------------------------------------------------------
def test_info_with_a_target_prints_only_it(db, tmp_path, capsys):
    pytest.importorskip("qdrant_client")
    q = ["--qdrant", str(tmp_path / "q"), "--collection", "photos"]
    assert cli.main(["index", "--db", str(db), *q]) == 0
    capsys.readouterr()
    for args, heading in ((q, "qdrant collection"), (["--db", str(db)], "index")):
        assert cli.main(["info", *args]) == 0
        out = capsys.readouterr().out
        assert out.startswith(heading + " ") and "description" not in out and "ONNX exports" not in out, out
    assert cli.main(["info", "--db", str(db), *q]) == 0  # both asked: both, a blank line between
    assert re.match(r"index .*\n\nqdrant collection ", capsys.readouterr().out, re.S)
    assert cli.main(["info"]) == 0  # alone: as it was
    out = capsys.readouterr().out
    assert out.startswith("polymodal ") and "description" in out and "ONNX exports for --runtime onnx" in out
    assert cli.main(["info", *q, "--json"]) == 0  # the JSON keeps every key
    assert {"models", "qdrant"} <= set(json.loads(capsys.readouterr().out))


# -- 4. the server's log gives serve's advice -----------------------------------------------------------------------
class _Cut:
    key = name = "cut"

    def caption(self, images, beam=3):  # 4 word pieces and no end: cut at max_tokens 4
        return caption_batches(images, 16, beam, 4, 3, lambda batch, *_: [[5, 6, 7, 8]] * len(batch), str, owner=self)


def test_the_servers_log_names_no_flag_serve_lacks(caplog):
    from polymodal.serve.app import _captions

    photos = [Image.new("RGB", (8, 8))] * 2
    with caplog.at_level(logging.WARNING):
        _captions(_Cut(), photos, 1)
    assert "2 of 2 captions reached max_tokens (4 word pieces)" in caplog.text
    assert "raise --max-tokens" not in caplog.text and "writes longer ones (a server cannot)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _Cut().caption(photos, 1)  # outside the server (a new model: warned once each): the CLI's advice, as before
    assert "raise --max-tokens (max_tokens=), or," in caplog.text


# -- 5. the page's script reads the panel ids from page.py ----------------------------------------------------------
def test_the_page_script_takes_its_panels_from_python(monkeypatch):
    from polymodal.serve import page

    monkeypatch.setitem(page.PANELS, "vqa", ("vqa", "vqa-extra"))  # a panel grown in Python only
    script = page.render_page().split("<script>")[1]
    assert f"const PANELS = {json.dumps(page.PANELS)};" in script
    ids = "|".join(re.escape(i) for ids in page.PANELS.values() for i in ids)
    assert not re.search(rf'\$\("({ids})"\)\.hidden|of \[[^\]]*"({ids})"', script)  # no panel ids of its own
