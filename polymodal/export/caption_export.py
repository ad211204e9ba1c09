"""ONNX export of a captioner (`captioner`, `polymodal train captioner` folders): two graphs and a tokenizer

    prefix.onnx  pixels [B, 3, S, S] -> keys, values [layers, B, heads, P, head_dim]  (image tower + prefix: the
                 photo's keys and values in every decoder layer)
    step.onnx    ids [N, 1], position [1], keys, values [layers, N, heads, T, head_dim] -> logits [N, V] and the
                 keys, values with this word appended (T + 1)

The beam search itself (`polymodal.models.beam_search`, numpy) is shared with the PyTorch captioner, so the two
runtimes decode the same way. Parity: on the validation photos both write captions with beam 3, and the first
step's logits must agree (cosine >= 0.999); the report gives the fraction of identical captions and photos/s of each.
Then an int8 (dynamic) step graph is tried: kept, and served, only if it captions faster than the fp32 graphs here
and CIDEr-D against the validation captions drops by at most ``max_drop_points`` (x100, as R@5 points elsewhere).
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

log = logging.getLogger(__name__)
MIN_SAME_CAPTIONS = 0.9  # float rounding may flip a near-tie between beams on a few photos, not more
MIN_GATE_PHOTOS = 5  # CIDEr-D weighs words by their rarity across the photos: a handful say nothing


class _Prefix(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self.model.past_of(self.model.prefix(self.model.image_cache_input(pixels)))
        return torch.stack([k for k, _ in past]), torch.stack([v for _, v in past])


class _Step(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        logits, past = self.model.extend(ids, position, list(zip(keys.unbind(0), values.unbind(0))))
        return logits, torch.stack([k for k, _ in past]), torch.stack([v for _, v in past])


@staged_export
def export_captioner_onnx(model, out: str | Path, images: Sequence, references: Sequence[Sequence[str]] | None = None,
                          progress: Callable[[str], None] = log.info, beam: int = 3, max_drop_points: float = 1.0,
                          timing_seconds: float = 1.0, variants: Sequence[str] | None = None,
                          keep_unserved: bool = False) -> dict:
    """Export a Captioner to ``out`` (new, empty or an earlier export: replaced whole once complete); ``images``
    (paths or PIL images) check parity and time both runtimes, their ``references`` (captions per image) gate the
    int8 step graph (``variants=[]`` tries none). Graphs tried but not served (the fp32 step graph a kept int8 one
    replaces) are deleted unless ``keep_unserved``."""
    import time

    from polymodal.data.images import draft_size_of
    from polymodal.data.pairs import open_pair_image
    from polymodal.export.caption_runtime import OnnxCaptioner
    from polymodal.models.beam_search import CLS
    from polymodal.models.inputs import each_or_error, readable_results

    if len(images) < 1:
        raise PolymodalError("captioner export needs validation photos: pass --val-pairs FILE")
    check_caption_variants(variants)
    # decoded once for every run below (files or tar members); unreadable ones are left out, as eval captions does
    size = draft_size_of(model)  # as the captioner reads a file
    opened = each_or_error(lambda one: [open_pair_image(one[0], size)], list(images), batch_size=1)  # decoded once
    kept = readable_results(opened, "validation photo")
    names = [_photo_name(images[i], i, references) for i in kept[:3]]
    images = [opened[i] for i in kept]
    references = None if references is None else [references[i] for i in kept]
    model.eval().requires_grad_(False)
    model._text[0].tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    pixels = torch.from_numpy(model.transform(images[:2] * (2 if len(images) < 2 else 1)))
    with torch.no_grad():
        keys, values = _Prefix(model)(pixels)
    ids, position = torch.full((2, 1), CLS, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    layout = {0: "layers", 1: "batch", 3: "tokens"}
    progress("exporting the prefix and step graphs (fp32)")
    export_graph(_Prefix(model), (pixels,), ["pixels"], out / "prefix.onnx", output=["keys", "values"],
                 token_axes={"keys": {1: "batch"}, "values": {1: "batch"}})
    export_graph(_Step(model), (ids, position, keys, values), ["ids", "position", "keys", "values"],
                 out / "step.onnx", output=["logits", "new_keys", "new_values"],
                 token_axes={"ids": {0: "batch"}, "position": {}, "keys": layout, "values": layout,
                             "new_keys": layout, "new_values": layout})
    config = {"type": "onnx_captioner", "name": model.name, "version": model.version,
              "transform": model.transform.to_dict(), "tokenizer": "tokenizer.json"}
    atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())

    progress(f"parity and speed on {len(images)} validation photos (beam {beam})")
    onnx_model = OnnxCaptioner(out)
    first_torch = _first_logits(model, images)
    first_onnx = onnx_model.first_logits(images)
    cosine = float((_unit(first_torch) * _unit(first_onnx)).sum(1).min())
    start = time.perf_counter()
    ref = model.caption(images, beam=beam)
    torch_s = time.perf_counter() - start
    start = time.perf_counter()
    got = onnx_model.caption(images, beam=beam)
    onnx_s = time.perf_counter() - start
    same = float(np.mean([a == b for a, b in zip(ref, got)]))
    if cosine < 0.999 or same < MIN_SAME_CAPTIONS:
        raise PolymodalError(f"captioner graph parity failed: first-step logit cosine {cosine:.5f}, identical "
                             f"captions on {same:.2f} of photos; the export is wrong, please report it")
    report = {"model": model.key, "photos": len(images), "beam": beam,
              "parity": {"min_first_step_logit_cosine": round(cosine, 6), "same_captions": round(same, 4)},
              "photos_per_s": {"pytorch": round(len(images) / torch_s, 2), "onnx": round(len(images) / onnx_s, 2)},
              "examples": [[name, c] for name, c in zip(names, got[:3])]}
    report["tries"] = [] if variants == [] else [_try_int8(out, config, onnx_model, images, references, got, beam,
                                                           max_drop_points, timing_seconds, progress)]
    report["served"] = graph_files(config)["step"]
    report["removed"] = [] if keep_unserved else drop_unserved(out, config)
    report["made_with"] = made_with()
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out / "report.md", caption_report_table(report).encode())
    return report


def check_caption_variants(variants: Sequence[str] | None) -> None:
    other = sorted(set(variants or ()) - {"int8_dynamic"})
    if other:
        raise PolymodalError(f"captioner exports have no {', '.join(other)} variant; the one tried is int8_dynamic")


def _try_int8(out: Path, config: dict, fp32_model, images: Sequence, references, fp32_captions: list[str], beam: int,
              max_drop: float, seconds: float, progress) -> dict:
    """The int8 dynamic step graph through the gate; a kept one is written into the config as the served step."""
    from polymodal.eval.captions import caption_scores
    from polymodal.export.caption_runtime import OnnxCaptioner
    from polymodal.export.onnx_export import gate, paired_speed, speed_up

    row = {"graph": "step", "variant": "int8_dynamic"}
    if not references:
        return {**row, "status": "skipped", "reason": "no validation captions to gate on (pass --val-pairs)"}
    if len(references) < MIN_GATE_PHOTOS:
        return {**row, "status": "skipped", "reason": f"CIDEr-D on {len(references)} photos says nothing about "
                f"quality; pass --val-pairs with at least {MIN_GATE_PHOTOS} photos"}
    try:
        reference = caption_scores(references, fp32_captions)["cider"]
    except PolymodalError as exc:  # pycocoevalcap missing: no quality gate, so no variant
        return {**row, "status": "skipped", "reason": str(exc)}
    path = out / "step.int8_dynamic.onnx"
    progress("trying int8_dynamic for the step graph")
    fp32_model.release_memory(images[0])  # the variant is built and checked without its arenas
    try:
        V.int8_dynamic(out / "step.onnx", path)
        atomic_write_bytes(out / ONNX_CONFIG, json.dumps({**config, "files": {"step": path.name}}).encode())
        trial = OnnxCaptioner(out)
        cider = caption_scores(references, trial.caption(images, beam=beam))["cider"]
        few = list(images[:8])
        speed, fp32_speed = paired_speed(lambda: trial.caption(few, beam=beam),
                                         lambda: fp32_model.caption(few, beam=beam), len(few), seconds,
                                         release=(lambda: trial.release_memory(few[0]),
                                                  lambda: fp32_model.release_memory(few[0])))
    except Exception as exc:  # an unsupported operator is a finding for the report, not a crash
        V.raise_if_disk_full(exc)  # a full disk is not
        path.unlink(missing_ok=True)
        return {**row, "status": "failed", "reason": V.failure_reason(exc)}
    finally:
        atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())
    drop = round(100 * (reference - cider), 2)
    status, reason = gate(speed, fp32_speed, drop, max_drop, metric="CIDEr-D")
    if status == "kept":
        config["files"] = {"step": path.name}
        atomic_write_bytes(out / ONNX_CONFIG, json.dumps(config, indent=2).encode())
    else:
        path.unlink(missing_ok=True)
    return {**row, "status": status, "photos_per_s": round(speed, 2), "x_fp32_onnx": speed_up(speed, fp32_speed),
            "cider": round(cider, 4), "cider_fp32": round(reference, 4), "drop_points": drop, "reason": reason}


def caption_report_table(report: dict) -> str:
    p, s = report["parity"], report["photos_per_s"]
    lines = [f"# ONNX export of {report['model']}", "",
             f"Validation: {report['photos']} photos, beam {report['beam']}. Parity: first-step logit cosine >= "
             f"{p['min_first_step_logit_cosine']}, identical captions on {p['same_captions']:.2%} of photos. "
             f"PyTorch {s['pytorch']} photos/s, ONNX fp32 {s['onnx']}. Served step graph: {report['served']}.", ""]
    lines += removed_line(report)
    lines += V.tries_table(report["tries"], ("photos_per_s", "photos/s"), ("cider", "CIDEr-D"))
    return "\n".join(lines) + "\n"


def _photo_name(image, i: int, references) -> str:
    """A validation photo as the report's examples name it: its path's end, or for a photo given as pixels (the
    built-in sample photos) its number and first reference (str() of an array printed its pixel values)."""
    if isinstance(image, (str, Path)) or isinstance(getattr(image, "name", None), str):
        return str(getattr(image, "name", image))[-60:]
    described = f" ({references[i][0]})" if references is not None and len(references[i]) else ""
    return f"photo {i + 1}{described}"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


@torch.inference_mode()
def _first_logits(model, images: Sequence) -> np.ndarray:
    """The logits of each photo's first word (after [CLS]), the reference for the step graph."""
    from polymodal.models.beam_search import CLS

    grid = model.encode_images(list(images))
    ids = torch.full((len(images), 1), CLS, dtype=torch.long)
    states = model.hidden(model.prefix(grid), ids, torch.ones_like(ids, dtype=torch.bool))
    return model.logits(states[:, -1]).float().numpy()
