"""Review of stop 44's newest changes (helper diffreview3): a late-fusion model saved before ``decision_heads`` loads
as trained when its fusion is a user's own subclass of late fusion too (as_recorded matched the name "late" only)."""

from __future__ import annotations

import json

import torch

from polymodal.fusion import FUSIONS
from polymodal.fusion.late import LateFusion
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig, as_recorded, load_fusion_encoder


class _FixedLate(LateFusion):  # a user's late fusion, registered under its own name
    name = "s44_dr3_late"


def test_a_late_fusion_subclass_saved_before_decision_heads_loads_as_trained(tmp_path, monkeypatch):
    monkeypatch.setitem(FUSIONS, _FixedLate.name, _FixedLate)  # register_fusion, for this test only
    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion=_FixedLate.name, dim=16, dropout=0.0, answers=["a", "b", "c"],
                                              decision_heads=False)).eval()
    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["decision_heads"]  # as a model saved before stop 44 wrote it
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_fusion_encoder(folder).eval()
    assert loaded.config.decision_heads is False  # was True: the heads it trained read decisions they never saw
    g = torch.Generator().manual_seed(1)
    images, states = torch.randn(2, 49, 1280, generator=g), torch.randn(2, 5, 384, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded.vqa_logits(images, states, mask), model.vqa_logits(images, states, mask))


def test_as_recorded_leaves_other_fusions_and_odd_values_alone():
    assert as_recorded({"fusion": "late"}) == {"fusion": "late", "decision_heads": False}
    for arch in ({}, {"fusion": "concat"}, {"fusion": "late", "decision_heads": True}, {"fusion": ["late"]},
                 {"fusion": "not-registered"}, {"type": "dual_encoder"}):
        assert as_recorded(arch) == arch
