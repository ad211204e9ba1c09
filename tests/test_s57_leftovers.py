"""Stop 57, helper leftovers: five small items stop 56 left. The kept-epoch record said "epoch K of N" with N the
--epochs of the session that saved it (an early stop after 3 of 5 epochs read "epoch 3 of 5"; a resume to 4 epochs
that kept epoch 2 read "epoch 2 of 2"); FusionEncoder.heat_map_method ran a model pass per read; an empty question
list gave token states [0, 1, 0]; `serve --model` without an index loaded a TorchScript or legacy (non-zip) CLIP .pt
fully (10-13 s) before refusing it; the export report's "x fp32 ORT" column showed a rejected 1.049x as 1.05."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.fusion import build_fusion
from polymodal.trained_with import kept_text, read_trained_with
from test_s55_serve5 import no_load as _no_load_fixture
from test_s56_runinfo import _Fit, _Saved

no_load = _no_load_fixture


# -- 1. "of N" is the epochs the run trained -------------------------------------------------------------------------
def _vqa_data(tmp_path):
    rows = []
    for name, rgb in {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "white": (255,) * 3}.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / f"{name}.png")
        rows += [{"image": f"{name}.png", "question": q, "answer": a}
                 for q, a in [("is it bright?", "yes"), ("is it dark?", "no"), ("which colour?", name)]]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "qa.jsonl"


def test_an_early_stop_says_how_many_epochs_it_trained(tmp_path, capsys):
    # lr 1e-12: every epoch's validation ties, which keeps the later epoch but counts against --patience 2
    run = tmp_path / "run"
    assert cli.main(["train", "vqa", "--qa", str(_vqa_data(tmp_path)), "--out", str(run), "--dim", "16",
                     "--fusion", "concat", "--val-fraction", "0.5", "--lr", "1e-12", "--patience", "2",
                     "--epochs", "5", "--quiet"]) == 0
    assert read_trained_with(run / "model")["kept"]["epochs"] == 3  # it said 5
    capsys.readouterr()
    assert cli.main(["info", "--model", str(run / "model")]) == 0
    assert "epoch kept    epoch 3 of 3 trained (--epochs 5), the best val/accuracy" in capsys.readouterr().out


def _session(out, scores, epochs, resume):
    """A run session through fit_and_save (train pretrain's and train vqa's end): epochs scored ``scores``."""
    from polymodal.train.fusion_run import fit_and_save
    from polymodal.train.trainer import TrainConfig, Trainer
    from polymodal.training_photos import TrainingPhotos

    torch.manual_seed(0)
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    it = iter(scores)
    trainer = Trainer(_Saved(4, 1), {"fit": (_Fit(), 1.0, loader)},
                      TrainConfig(epochs=epochs, lr=0.05, warmup_steps=1, patience=0), out,
                      eval_fn=lambda m: {"val/rsum": next(it)}, progress=False)
    photos = TrainingPhotos([], settings={"train": {"seed": 0}}, trainer=trainer)
    fit_and_save(trainer, photos, {}, resume, overwrite=False, score_start=False)
    return read_trained_with(out / "model")


def test_a_resume_that_keeps_an_older_epoch_counts_every_epoch(tmp_path):
    assert kept_text(_session(tmp_path / "run", [1.0, 2.0], 2, False)) == "epoch 2 of 2, the best val/rsum 2"
    record = _session(tmp_path / "run", [1.5, 1.0], 4, True)  # epochs 3 and 4 score lower: RUN/model stays epoch 2
    assert record["kept"] == {"epoch": 2, "epochs": 4, "metric": "val/rsum", "value": 2.0}
    assert kept_text(record) == "epoch 2 of 4, the best val/rsum 2"  # it said "of 2"


def test_older_records_read_as_before():
    record = {"kept": {"epoch": 0, "epochs": 3, "metric": "val/rsum", "value": 4.2091}}
    assert kept_text(record) == "the starting model (epoch 0), unchanged: no epoch of 3 beat its val/rsum 4.209"
    record["kept"]["asked"] = 5
    assert kept_text(record) == ("the starting model (epoch 0), unchanged: no epoch of 3 trained (--epochs 5) beat "
                                 "its val/rsum 4.209")


# -- 2. heat_map_method: one pass per fusion ---------------------------------------------------------------------------
def test_heat_map_method_asks_each_fusion_once(easy_vqa, monkeypatch):
    passes = []
    real = type(easy_vqa).fuse_tokens
    monkeypatch.setattr(type(easy_vqa), "fuse_tokens", lambda self, *a: passes.append(1) or real(self, *a))
    own, d = easy_vqa.fusion, easy_vqa.config.dim
    try:
        assert [easy_vqa.heat_map_method for _ in range(3)] == ["gradient relevance"] * 3
        assert len(passes) <= 1  # (0 where an earlier test already asked this fusion) - it made one pass a read
        passes.clear()
        easy_vqa.fusion = build_fusion("cross_attention", [d, d], d, query=1)  # another fusion is asked anew
        assert [easy_vqa.heat_map_method for _ in range(3)] == ["attention map"] * 3 and len(passes) == 1
    finally:
        easy_vqa.fusion = own
    assert easy_vqa.heat_map_method == "gradient relevance" and "_heat_map_method" not in easy_vqa.state_dict()


# -- 3. no question: states of the right shape; the commands still refuse first ------------------------------------
def test_no_question_gives_empty_states_of_the_right_shape(easy_vqa, tmp_path, capsys):
    from polymodal.eval.vqa import vqa_accuracy
    from polymodal.train.vqa import cached_predictions, question_features

    states, lengths = question_features(easy_vqa, [], progress=False)
    assert states.shape == (0, 1, 384) and lengths.shape == (0,)  # was (0, 1, 0)
    assert tuple(states.shape[1:]) == tuple(easy_vqa.encode_questions([])[0].shape[1:])
    with pytest.raises(PolymodalError, match="no images to encode"):
        cached_predictions(easy_vqa, [], [])
    with pytest.raises(PolymodalError, match="no rows to evaluate"):
        vqa_accuracy(easy_vqa, [])
    (tmp_path / "empty.jsonl").write_text("")
    for args in (["eval", "vqa", "--model", "easy-vqa"], ["train", "vqa", "--out", str(tmp_path / "run")]):
        assert cli.main([*args, "--qa", str(tmp_path / "empty.jsonl")]) == 2
        err = capsys.readouterr().err
        assert "has no usable question-answer rows" in err and "Traceback" not in err


# -- 4. TorchScript and legacy CLIP .pt files told by their files ------------------------------------------------------
class _Visual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 2, bias=False)

    def forward(self, x):
        return self.conv1(x)


class _Clip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual, self.token_embedding = _Visual(), nn.Embedding(3, 2)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x) * self.logit_scale


class _System:
    """Pickled as a call of os.system: read by the key reader, it must run nothing."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def test_torchscript_and_legacy_clip_files_are_known_before_loading(no_load, tmp_path, capsys):
    from polymodal.models.clip import read_state_dict
    from polymodal.models.clip_keys import state_dict_keys
    from polymodal.registry import names_an_embedder
    from polymodal.serve import create_app

    torch.jit.save(torch.jit.script(_Clip()), tmp_path / "jit.pt")
    torch.jit.save(torch.jit.script(_Visual()), tmp_path / "jit-other.pt")  # "conv1.weight": no CLIP
    sd = _Clip().state_dict()
    clip = [tmp_path / "jit.pt", _legacy(sd, tmp_path / "legacy.pt"),
            _legacy({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "legacy-wrapped.pth")]
    marker = tmp_path / "ran"
    other = [tmp_path / "jit-other.pt", _legacy({"visual.conv2.weight": torch.zeros(1)}, tmp_path / "legacy-other.pt")]
    (tmp_path / "pickle-only.pt").write_bytes(pickle.dumps({"visual.conv1.weight": 1}))  # no torch file at all
    other.append(tmp_path / "pickle-only.pt")
    for path in clip:
        assert names_an_embedder(path), path
        assert state_dict_keys(path) == list(read_state_dict(path)), path  # the names polymodal.load reads
        with pytest.raises(PolymodalError, match="embeds images for an index: pass --db DB"):
            create_app(path, None)  # polymodal.load would raise _NotLoaded
    for path in other:
        assert not names_an_embedder(path), path
    # a value that would call os.system is never built (as in a zip file): its key is read, nothing runs
    assert state_dict_keys(_legacy({"visual.conv1.weight": _System(marker)}, tmp_path / "code.pt")) \
        == ["visual.conv1.weight"] and not marker.exists()
    assert cli.main(["serve", "--model", str(clip[0]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "jit.pt embeds images for an index" in err and "Traceback" not in err


# -- 5. the report's "x fp32 ORT" keeps a figure on its side of the bar ------------------------------------------------
def test_the_speed_up_column_never_rounds_across_the_bar():
    from polymodal.export import onnx_export as E

    assert [E.speed_up(s, 100.0) for s in (104.9, 105.1, 105.0, 110.0, 253.0)] == [1.049, 1.051, 1.05, 1.1, 2.53]
    emb = np.eye(4, dtype=np.float32)
    reference = {"t2i_R@5": 1.0, "i2t_R@5": 1.0}
    status, reason = E.gate(104.9, 100.0, 0.0, 1.0)
    row = E._row("image", "int8_dynamic", status, 104.9, 80.0, 100.0, emb, {"image": emb, "text": emb}, "image",
                 SimpleNamespace(caption_image=np.arange(4)), reference, reason, "image.int8_dynamic.onnx")
    report = {"model": "m", "validation": "v", "reference_pytorch_fp32": reference, "pytorch_fp32_items_per_s": {},
              "served": {}, "served_drop_points": 0.0, "removed": [], "tries": [row]}
    line = next(line for line in E.report_table(report).splitlines() if "int8_dynamic" in line)
    assert "| rejected | 104.9 | 1.049 |" in line and "1.049x fp32 onnxruntime, 1.05x needed" in line  # was 1.05
