"""The two graphs an embedding model exports: pixels -> embedding and token ids -> embedding (L2-normalised).

Any model with ``_image_batch(pixels)``, ``text_from_tokens(input_ids, attention_mask)`` and ``text_tokenizer``
(lite, dual encoders such as ``default``, CLIP checkpoints) exports. The batch axis (and the token axis) are dynamic.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from polymodal.cache import name_the_file, temp_beside
from polymodal.errors import PolymodalError

OPSET = 17


def made_with() -> dict:
    """The versions an export was made and checked with (report.json): a deployer whose box has an older onnxruntime
    can tell which one the parity figures hold for."""
    from importlib.metadata import PackageNotFoundError, version

    from polymodal import __version__

    found = {"polymodal": __version__, "opset": OPSET}
    for package in ("torch", "onnx", "onnxruntime"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


class _Graph(nn.Module):
    """Registers the model's modules and tensors so the tracer sees weights as parameters, not constants
    (lite is not an nn.Module itself)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        if isinstance(model, nn.Module):
            self.inner = model
        else:
            for name, value in vars(model).items():
                if isinstance(value, nn.Module):
                    self.add_module(f"m_{name}", value)
                elif isinstance(value, torch.Tensor):
                    self.register_buffer(f"b_{name}", value, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        # .to(dtype) replaces registered buffers; point the (non-Module) model's attributes at the new tensors
        out = super()._apply(fn, *args, **kwargs)
        if not isinstance(self.model, nn.Module):
            for name, value in self._buffers.items():
                setattr(self.model, name[2:], value)
        return out


class ImageGraph(_Graph):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised pixels -> ``[B, D]`` unit vectors."""
        return nn.functional.normalize(self.model._image_batch(pixels).float(), dim=-1)


class TextGraph(_Graph):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids and mask -> ``[B, D]`` unit vectors."""
        return nn.functional.normalize(self.model.text_from_tokens(input_ids, attention_mask).float(), dim=-1)


class _Bf16(nn.Module):
    """Runs a graph in bfloat16 (weights and activations), float32 in and out."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph).to(torch.bfloat16)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        inputs = tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)
        return self.graph(*inputs).float()


def check_exportable(model) -> None:
    if hasattr(model, "vqa_logits"):
        raise PolymodalError(f"{getattr(model, 'name', 'this model')} is a VQA model: export it with "
                             "polymodal.export.fusion_export.export_fusion_onnx(model, out, qa_rows) "
                             "(`polymodal export onnx MODEL --val-qa FILE`)")
    missing = [a for a in ("_image_batch", "text_from_tokens", "text_tokenizer") if not hasattr(model, a)]
    if missing:
        what = getattr(model, "name", None) or type(model).__name__
        raise PolymodalError(f"{what} cannot be exported to ONNX; these kinds of model "
                             "export: embedding models (lite, default, a folder from `polymodal train contrastive`, "
                             "a CLIP checkpoint), fusion VQA models (easy-vqa, with --val-qa) and captioners")
    if hasattr(model, "check_onnx_export"):  # a model whose graphs this environment cannot trace says so here
        model.check_onnx_export()


def export_graph(graph: nn.Module, example: tuple[torch.Tensor, ...], names: list[str], path: Path,
                 bf16: bool = False, output: str | list[str] = "embedding", token_axes: dict | None = None) -> Path:
    """Trace ``graph`` on ``example`` into ONNX at ``path`` (written beside it, then renamed). Axis 0 of every input
    and output (one name, or a list for several) is the batch; 2-D inputs (token ids, masks) also have a dynamic
    token axis; ``token_axes`` replaces a name's dynamic axes, e.g. {"states": {0: "batch", 1: "tokens"}}."""
    outputs = [output] if isinstance(output, str) else list(output)
    graph = graph.eval().requires_grad_(False)
    if bf16:
        graph = _Bf16(graph).eval()
    axes = {n: ({0: "batch", 1: "tokens"} if ex.dim() == 2 else {0: "batch"}) for n, ex in zip(names, example)}
    axes.update({name: {0: "batch"} for name in outputs})
    axes.update(token_axes or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
            torch.onnx.export(graph, example, tmp, input_names=names, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    except OSError as exc:
        name_the_file(exc, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
