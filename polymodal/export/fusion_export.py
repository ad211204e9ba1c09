"""ONNX export of a VQA fusion encoder (`easy-vqa`, `polymodal train vqa` folders): three graphs, four with an ITM head

    grid.onnx      pixels [B, 3, S, S] -> grid tokens [B, g*g, F]            (the image tower, the cost)
    question.onnx  input_ids, attention_mask [B, L] -> token states [B, L, 384] (the text tower)
    head.onnx      grid tokens, token states, attention_mask -> answer logits [B, A]  (projections, fusion, VQA head)
    match.onnx     grid tokens, token states, attention_mask -> match logits [B]  (the ITM head, which scores
                   multiple-choice candidates outside the answers; only for models that have one)

Parity: on validation questions the onnxruntime logits must give the same top-1 answer as PyTorch for every row
(cosine >= 0.999 of the logit vectors); the VQA accuracy of both is reported. Then int8 variants of the two tower
graphs are tried (grid: static and dynamic, question: dynamic); as for embedding models a variant is kept only if
it is faster than fp32 here and VQA accuracy on the validation questions drops by at most ``max_drop_points``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError
from polymodal.export import variants as V
from polymodal.export.graphs import export_graph, made_with
from polymodal.export.out_folder import staged_export
from polymodal.export.runtime import ONNX_CONFIG, drop_unserved, graph_files, removed_line
from polymodal.models.not_finite import BROKEN

log = logging.getLogger(__name__)


class _Part(nn.Module):
    """One traced part of a fusion encoder (its forward picks the part)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model


class _Grid(_Part):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.image_cache_input(pixels)


class _Question(_Part):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model.text_tower.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states.float() * attention_mask.unsqueeze(-1).float()  # padding zeroed, as the cache stores it


class _Head(_Part):
    def forward(self, grid: torch.Tensor, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.vqa_logits(grid, states, attention_mask.bool())


class _Match(_Part):
    def forward(self, grid: torch.Tensor, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.itm_logits(grid, states, attention_mask.bool())


TOWER_VARIANTS = {"grid": ("int8_static", "int8_dynamic"), "question": ("int8_dynamic",)}
ALONE_CHECKS = 32  # questions asked alone too: does a variant answer them as it does inside a batch?


def check_vqa_variants(variants: Sequence[str] | None) -> None:
    """A variant no VQA graph has (bf16) is an error, not a silent export without it."""
    known = sorted({v for names in TOWER_VARIANTS.values() for v in names})
    V.check_variant_list(variants)
    missing = sorted(set(variants or ()) - set(known))
    if missing:
        raise PolymodalError(f"VQA exports have no {', '.join(missing)} variant; choose from {', '.join(known)}")


@staged_export
def export_fusion_onnx(model, out: str | Path, rows: Sequence, progress: Callable[[str], None] = log.info,
                       max_drop_points: float = 1.0, timing_seconds: float = 1.0,
                       variants: Sequence[str] | None = None, keep_unserved: bool = False) -> dict:
    """Export a FusionEncoder with a VQA head to ``out`` (new, empty or an earlier export: replaced whole once
    complete); ``rows`` (QARow) check parity and accuracy. ``variants``
    limits which int8 variants are tried (default: all of TOWER_VARIANTS; [] = none). Graphs tried but not served
    are deleted unless ``keep_unserved``."""
    from polymodal.eval.vqa import accuracy_by_type, as_rows
    from polymodal.export.fusion_runtime import OnnxFusionEncoder

    check_vqa_variants(variants)
    rows = as_rows(rows)  # QARow objects or {"image", "question", "answer"} dicts
    if not getattr(model, "answers", None):
        raise PolymodalError("this fusion encoder has no VQA head (a pretrained encoder?); fine-tune it with "
                             "`polymodal train vqa --model FOLDER` before exporting")
    if not rows:
        raise PolymodalError("VQA export needs validation questions: pass --val-qa FILE.jsonl")
    rows = _readable_rows(model, rows)
    model.eval().requires_grad_(False)
    images, questions = [r.image for r in rows], [r.question for r in rows]
    ref_logits = _torch_logits(model, images, questions)  # first: a broken model is refused before any graph is made
    _check_finite(ref_logits, questions)
    tok = model.text_tower.tokenizer
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    max_length = int(model.text_tower.max_length)
    pixels = torch.from_numpy(model.transform([rows[0].image, rows[-1].image]))
    enc = tok([rows[0].question, rows[-1].question + " and more words"], padding=True, truncation=True,
              max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        grid = model.image_cache_input(pixels)
        states = _Question(model)(enc["input_ids"], enc["attention_mask"])
    has_itm = getattr(model, "itm", None) is not None
    progress(f"exporting the grid, question{', head and match' if has_itm else ' and head'} graphs (fp32)")
    export_graph(_Grid(model), (pixels,), ["pixels"], out / "grid.onnx", output="grid")
    export_graph(_Question(model), (enc["input_ids"], enc["attention_mask"]), ["input_ids", "attention_mask"],
                 out / "question.onnx", output="states", token_axes={"states": {0: "batch", 1: "tokens"}})
    export_graph(_Head(model), (grid, states, enc["attention_mask"]), ["grid", "states", "attention_mask"],
                 out / "head.onnx", output="logits",
                 token_axes={"states": {0: "batch", 1: "tokens"}})
    if has_itm:
        export_graph(_Match(model), (grid, states, enc["attention_mask"]), ["grid", "states", "attention_mask"],
                     out / "match.onnx", output="match", token_axes={"states": {0: "batch", 1: "tokens"}})
    config = {"type": "onnx_fusion_encoder", "name": model.name, "version": model.version,
              "answers": list(model.answers), "transform": model.transform.to_dict(),
              "tokenizer": "tokenizer.json", "max_length": max_length,
              "pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token), "itm_head": has_itm}
    atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())

    progress(f"parity and accuracy on {len(rows)} validation questions")
    onnx_model = OnnxFusionEncoder(out)
    got_logits = onnx_model.logits(images, questions)
    cosine = float((_unit(ref_logits) * _unit(got_logits)).sum(1).min())
    same_top1 = float((ref_logits.argmax(1) == got_logits.argmax(1)).mean())
    if same_top1 < 1.0 or cosine < 0.999:
        raise PolymodalError(f"VQA graph parity failed: same top-1 on {same_top1:.4f} of rows, min logit cosine "
                             f"{cosine:.5f}; the export is wrong, please report it")
    parity = {"same_top1": same_top1, "min_logit_cosine": round(cosine, 6)}
    if has_itm:
        match_ref = _torch_match(model, rows)  # PyTorch's scores, for the fp32 graphs and again for the served ones
        parity["match_max_abs_diff"] = _match_parity(model, onnx_model, rows, reference=match_ref)
    answers = model.answers
    acc_torch = accuracy_by_type([answers[i] for i in ref_logits.argmax(1)], rows)
    acc_onnx = accuracy_by_type([answers[i] for i in got_logits.argmax(1)], rows)
    wanted = {g: [v for v in names if variants is None or v in variants] for g, names in TOWER_VARIANTS.items()}
    tries = _try_variants(out, config, onnx_model, rows, acc_torch["accuracy"], wanted, max_drop_points,
                          timing_seconds, progress)
    final = OnnxFusionEncoder(out)
    acc_served = accuracy_by_type([a for a, _ in final.predict(images, questions)], rows)
    if has_itm and set(final.variants.values()) != {"fp32"}:  # an int8 tower graph feeds the match graph too
        parity["match_served_max_abs_diff"] = _match_parity(model, final, rows, tolerance=None, reference=match_ref)
    report = {"model": model.key, "questions": len(rows), "parity": parity, "accuracy_pytorch": acc_torch,
              "accuracy_onnx": acc_onnx, "served": graph_files(config), "accuracy_served": acc_served, "tries": tries,
              "removed": [] if keep_unserved else drop_unserved(out, config), "made_with": made_with()}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out / "report.md", vqa_report_table(report).encode())
    return report


def vqa_report_table(report: dict) -> str:
    """The VQA export report as Markdown: parity, accuracies, then one row per variant tried."""
    served = ", ".join(f"{g}: {f}" for g, f in report["served"].items())
    lines = [f"# ONNX export of {report['model']}", "",
             f"Validation: {report['questions']} questions. Parity: same top-1 answer on "
             f"{report['parity']['same_top1']:.4f} of them, min logit cosine {report['parity']['min_logit_cosine']}"
             f"{_match_words(report['parity'])}. "
             f"Accuracy: PyTorch {report['accuracy_pytorch']['accuracy']}, ONNX fp32 {report['accuracy_onnx']['accuracy']}, "
             f"served {report['accuracy_served']['accuracy']}. Served graphs: {served}.", ""]
    lines += removed_line(report)
    lines += V.tries_table(report["tries"], ("items_per_s", "items/s"), ("accuracy", "accuracy"),
                           ("answers_changed_alone", "answers changed when asked alone"))
    return "\n".join(lines) + "\n"


def _match_words(parity: dict) -> str:
    if "match_max_abs_diff" not in parity:
        return ""
    served = parity.get("match_served_max_abs_diff")
    served = f" ({served} with the served int8 graphs)" if served is not None else ""
    return f", ITM match probability within {parity['match_max_abs_diff']} of PyTorch's{served}"


MATCH_PARITY_TOLERANCE = 1e-3  # on the sigmoid: a candidate's score, not a ranking


def _match_statements(rows) -> list[str]:
    """Each validation row's question with its answer appended: the statements multiple choice scores."""
    return [f"{r.question} {r.answer}" for r in rows]


@torch.inference_mode()
def _torch_match(model, rows) -> np.ndarray:
    """The PyTorch ITM head's match probability of each row's statement, its image encoded alone."""
    ref = []
    for r, s in zip(rows, _match_statements(rows)):
        grid = model.encode_images([r.image])
        states, mask = model.encode_questions([s])
        ref.append(torch.sigmoid(model.itm_logits(grid, states, mask)).numpy())
    return np.concatenate(ref)


def _match_parity(model, onnx_model, rows, tolerance: float | None = MATCH_PARITY_TOLERANCE,
                  reference: np.ndarray | None = None) -> float:
    """The largest |sigmoid difference| of the ITM head, PyTorch (``reference``, else computed) vs the match graph,
    on each validation row's question with its answer appended; over ``tolerance`` is an error (None: a figure for
    the report, e.g. of served int8 graphs, which the VQA accuracy gate judges)."""
    ref = _torch_match(model, rows) if reference is None else reference
    got = onnx_model.match_scores([r.image for r in rows], _match_statements(rows))
    diff = float(np.abs(ref - got).max())
    if tolerance is not None and diff > tolerance:
        raise PolymodalError(f"ITM graph parity failed: match probabilities differ by up to {diff:.5f} from "
                             "PyTorch's; the export is wrong, please report it")
    return round(diff, 6)


def _try_variants(out: Path, config: dict, fp32_model, rows, acc_ref: float, wanted: dict, max_drop: float,
                  seconds: float, progress) -> list[dict]:
    """int8 variants of the grid and question graphs through the gate; the kept fastest is written to the config."""
    from polymodal.eval.vqa import accuracy_by_type
    from polymodal.export.fusion_runtime import OnnxFusionEncoder
    from polymodal.export.onnx_export import gate, paired_speed, speed_up

    images, questions = [r.image for r in rows], [r.question for r in rows]
    pixels = fp32_model.transform(images[:32])
    tokens = fp32_model.tokenizer(questions[:32])
    inputs = {"grid": {"pixels": pixels}, "question": tokens}
    calibration = {"grid": [{"pixels": pixels[i : i + 8]} for i in range(0, len(pixels), 8)],
                   "question": [fp32_model.tokenizer(questions[i : i + 8]) for i in range(0, min(len(questions), 64), 8)]}
    tries = []
    fp32_model.release_memory(images[0], questions[0])  # the variants are built and checked without its arenas
    for graph, names in wanted.items():
        fp32_session = getattr(fp32_model, graph)
        best = None
        for name in names:
            path = out / f"{graph}.{name}.onnx"
            progress(f"trying {name} for the {graph} graph")
            try:
                getattr(V, name)(out / f"{graph}.onnx", path, calibration[graph])
                config_files = {**config.get("files", {}), graph: path.name}
                atomic_write_bytes(out / ONNX_CONFIG, json.dumps({**config, "files": config_files}).encode())
                trial = OnnxFusionEncoder(out)
                said = [a for a, _ in trial.predict(images, questions)]
                acc = accuracy_by_type(said, rows)["accuracy"]
                # int8 dynamic quantizes activations per batch: an answer near a tie can change with its batch
                changed = sum(trial.predict([i], [q])[0][0] != a
                              for i, q, a in zip(images[:ALONE_CHECKS], questions[:ALONE_CHECKS], said))
                session = getattr(trial, graph)
                speed, fp32_speed = paired_speed(lambda: session.run(None, inputs[graph]),
                                                 lambda: fp32_session.run(None, inputs[graph]),
                                                 len(next(iter(inputs[graph].values()))), seconds,
                                                 release=(lambda: trial.release_memory(images[0], questions[0]),
                                                          lambda: fp32_model.release_memory(images[0], questions[0])))
            except Exception as exc:  # an unsupported operator is a finding for the report, not a crash
                V.raise_if_disk_full(exc)  # a full disk is not
                tries.append({"graph": graph, "variant": name, "status": "failed",
                              "reason": V.failure_reason(exc)})
                path.unlink(missing_ok=True)
                continue
            finally:
                atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())
                trial = session = None  # its sessions must not live on while the next variant is quantized
            drop = round(100 * (acc_ref - acc), 2)
            status, reason = gate(speed, fp32_speed, drop, max_drop, metric="VQA accuracy")
            tries.append({"graph": graph, "variant": name, "status": status, "items_per_s": round(speed, 1),
                          "x_fp32_onnx": speed_up(speed, fp32_speed), "accuracy": round(acc, 4), "drop_points": drop,
                          "answers_changed_alone": f"{changed} of {min(len(said), ALONE_CHECKS)}", "reason": reason})
            if status == "kept" and (best is None or speed / fp32_speed > best[1]):
                best = (path.name, speed / fp32_speed)
            elif status != "kept":
                path.unlink(missing_ok=True)
        if best is not None:
            config.setdefault("files", {})[graph] = best[0]
            atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())
            for t in tries:  # as the embedding export says it: kept, but a faster kept variant serves
                if t["graph"] == graph and t["status"] == "kept" and f"{graph}.{t['variant']}.onnx" != best[0]:
                    V.mark_not_served(t)
    return tries


def _check_finite(logits: np.ndarray, questions: Sequence[str]) -> None:
    """One error when the model's answer logits on --val-qa are NaN or inf: parity passed on them (NaN's argmax is
    the first answer on both sides) and the report held "min_logit_cosine": NaN."""
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if len(bad):
        raise PolymodalError(f"the model's answer logits are NaN or inf on {len(bad):,} of the {len(logits):,} "
                             f"--val-qa questions (first: {questions[bad[0]]!r:.80}): {BROKEN}; nothing to export")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _readable_rows(model, rows: list) -> list:
    """The rows whose photo reads; the others are left out with one warning, as `eval vqa` and the embedding and
    captioner exports leave an unreadable validation photo out (here it ended the export after the graphs were
    written). None readable: one error."""
    from dataclasses import replace

    from polymodal.eval.retrieval import inside_as_bytes
    from polymodal.models.inputs import each_or_error, readable_results

    def read(batch: list) -> list:  # a Parquet file's or a shard's "<file>#<row>" as its bytes: no model opens it
        images = [inside_as_bytes(image) for _, image in batch]
        model.transform(images)
        return [(image,) for image in images]  # (a str is each_or_error's failure)

    key = lambda image: str(image) if isinstance(image, (str, Path)) else id(image)  # noqa: E731 - a photo once
    photos = list({key(r.image): r.image for r in rows}.items())
    decoded = each_or_error(read, photos)
    readable = {photos[i][0]: decoded[i][0] for i in readable_results(decoded, "validation photo")}
    return [replace(r, image=readable[key(r.image)]) for r in rows if key(r.image) in readable]


@torch.inference_mode()
def _torch_logits(model, images: Sequence, questions: Sequence[str]) -> np.ndarray:
    out = []
    for i in range(len(images)):
        grid = model.encode_images([images[i]])
        states, mask = model.encode_questions([questions[i]])
        out.append(model.vqa_logits(grid, states, mask).float().numpy())
    return np.concatenate(out)
