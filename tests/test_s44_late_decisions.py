"""Late fusion in the fusion encoder is decision-level: the VQA and ITM heads read each modality's own decision
and their outputs are averaged, so an answer's logit is a sum of an image part and a question part (no
interaction, by design). Before, the nonlinear VQA head read the averaged decision: additive fusion of modality
vectors, which learns interactions. Models saved before keep that (their config has no decision_heads)."""

from __future__ import annotations

import json

import pytest
import torch

from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig, load_fusion_encoder


def _model(decision_heads: bool = True, answers=("a", "b", "c")) -> FusionEncoder:
    torch.manual_seed(0)
    config = FusionEncoderConfig(fusion="late", dim=16, dropout=0.0, answers=list(answers), itm_head=True,
                                 decision_heads=decision_heads)
    return FusionEncoder(config).eval()


def _inputs(model: FusionEncoder):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, model.config.grid**2, 1280, generator=g)
    states = torch.randn(2, 5, 384, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    return images, states, mask


def _crossed(model, fn):
    """fn's outputs for (image i, question j), i, j in 0, 1."""
    images, states, mask = _inputs(model)
    out = {}
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                out[i, j] = fn(images[i : i + 1], states[j : j + 1], mask[j : j + 1])
    return out


@pytest.mark.parametrize("head", ["vqa_logits", "itm_logits"])
def test_decision_level_outputs_add_an_image_part_and_a_question_part(head):
    model = _model()
    out = _crossed(model, getattr(model, head))
    # f(i, q) = w_image h(image decision i) + w_text h(question decision q): the crossed sums agree
    torch.testing.assert_close(out[0, 0] + out[1, 1], out[0, 1] + out[1, 0], atol=1e-5, rtol=0)
    additive = _model(decision_heads=False)
    old = _crossed(additive, getattr(additive, head))
    assert (old[0, 0] + old[1, 1] - old[0, 1] - old[1, 0]).abs().max() > 1e-4  # the nonlinear head mixes them


def test_a_model_saved_before_the_setting_loads_as_it_was_trained(tmp_path):
    model = _model(decision_heads=False)
    folder = model.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["decision_heads"]  # as a model saved before stop 44 wrote it
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_fusion_encoder(folder).eval()
    assert loaded.config.decision_heads is False
    images, states, mask = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.vqa_logits(images, states, mask), model.vqa_logits(images, states, mask))


def test_a_new_model_saves_and_loads_decision_level(tmp_path):
    model = _model()
    loaded = load_fusion_encoder(model.save(tmp_path / "m")).eval()
    assert loaded.config.decision_heads is True
    images, states, mask = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.vqa_logits(images, states, mask), model.vqa_logits(images, states, mask))


def test_other_fusions_are_unaffected():
    torch.manual_seed(0)
    a = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.0, answers=["a", "b"])).eval()
    b = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.0, answers=["a", "b"],
                                          decision_heads=False)).eval()
    b.load_state_dict(a.state_dict())
    images, states, mask = _inputs(a)
    with torch.no_grad():
        torch.testing.assert_close(a.vqa_logits(images, states, mask), b.vqa_logits(images, states, mask))


def test_the_onnx_export_of_a_decision_level_model_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    easy_vqa = pytest.importorskip("easy_vqa")
    from polymodal.eval.vqa import QARow
    from polymodal.export.fusion_export import export_fusion_onnx
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    rows = [QARow(image=str(paths[i]), question=q, answer=a) for q, a, i in list(zip(questions, answers, image_ids))[:6]]
    model = _model(answers=sorted(set(answers)))
    report = export_fusion_onnx(model, tmp_path / "export", rows, variants=[], timing_seconds=0.01)
    assert report["parity"]["same_top1"] == 1.0
    onnx = OnnxFusionEncoder(tmp_path / "export")
    for row in rows[:3]:
        ours, theirs = model.answer(row.image, row.question), onnx.answer(row.image, row.question)
        assert ours["answer"] == theirs["answer"] and abs(ours["score"] - theirs["score"]) < 1e-4


def test_a_run_started_before_resumes_with_the_heads_it_trained(gallery, tmp_path):
    """A late-fusion run whose train_config.json predates decision_heads trained with the head over the averaged
    decision; --resume rebuilds the model from that file, and with the new default would have put the checkpoint's
    weights into decision-level heads."""
    from polymodal import cli

    names = ["cat", "rocket", "coffee", "moon"]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "question": "what is it?", "answer": n})
                          + "\n" for n in names))
    out = tmp_path / "run"
    # no validation: RUN/model is the last epoch's (with it, an epoch 2 scoring lower left epoch 1's model there)
    train = ["train", "vqa", "--qa", str(qa), "--val-fraction", "0", "--out", str(out), "--fusion", "late", "--dim",
             "16", "--batch-size", "2", "--quiet"]
    assert cli.main([*train, "--epochs", "1"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["decision_heads"] is True
    config = json.loads((out / "train_config.json").read_text())
    del config["arch"]["decision_heads"]  # as a run started before stop 44 wrote it
    (out / "train_config.json").write_text(json.dumps(config))
    assert cli.main([*train, "--epochs", "2", "--resume"]) == 0
    assert json.loads((out / "model" / "config.json").read_text())["decision_heads"] is False
