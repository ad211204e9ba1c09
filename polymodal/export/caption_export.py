"""ONNX export of a captioner (`captioner`, `polymodal train captioner` folders): two graphs and a tokenizer

    prefix.onnx  pixels [B, 3, S, S] -> keys, values [layers, B, heads, P, head_dim]  (image tower + prefix: the
                 photo's keys and values in every decoder layer)
    step.onnx    ids [N, 1], position [1], keys, values [layers, N, heads, T, head_dim] -> logits [N, V] and the
                 keys, values with this word appended (T + 1)

The beam search itself (`polymodal.models.beam_search`, numpy) is shared with the PyTorch captioner, so the two
runtimes decode the same way. Parity: on the validation photos both write captions with beam 3, and the first
step's logits must agree (cosine >= 0.999); the report gives the fraction of identical captions and photos/s of each.
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
from polymodal.export.graphs import export_graph
from polymodal.export.runtime import ONNX_CONFIG

log = logging.getLogger(__name__)
MIN_SAME_CAPTIONS = 0.9  # float rounding may flip a near-tie between beams on a few photos, not more


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


def export_captioner_onnx(model, out: str | Path, images: Sequence, progress: Callable[[str], None] = log.info,
                          beam: int = 3) -> dict:
    """Export a Captioner to ``out``; ``images`` (paths or PIL images) check parity and time both runtimes."""
    import time

    from polymodal.export.caption_runtime import OnnxCaptioner
    from polymodal.models.beam_search import CLS

    if len(images) < 1:
        raise PolymodalError("captioner export needs validation photos: pass --val-pairs FILE")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().requires_grad_(False)
    model._text[0].tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    pixels = torch.from_numpy(model.transform(list(images[:2]) * (2 if len(images) < 2 else 1)))
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
              "examples": [[str(getattr(i, "name", i))[-60:], c] for i, c in zip(images[:3], got[:3])]}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    atomic_write_bytes(out / "report.md", caption_report_table(report).encode())
    return report


def caption_report_table(report: dict) -> str:
    p, s = report["parity"], report["photos_per_s"]
    return (f"# ONNX export of {report['model']}\n\nValidation: {report['photos']} photos, beam {report['beam']}. "
            f"Parity: first-step logit cosine >= {p['min_first_step_logit_cosine']}, identical captions on "
            f"{p['same_captions']:.2%} of photos.\n\n| runtime | photos/s |\n|---|---|\n"
            f"| PyTorch | {s['pytorch']} |\n| ONNX | {s['onnx']} |\n")


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
