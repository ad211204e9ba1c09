"""Serve an exported embedding model through onnxruntime: numpy + Pillow preprocessing, a `tokenizers` tokenizer,
no torch import (``polymodal.load(name_or_folder, runtime="onnx")``).

The export folder (written by `polymodal export onnx`) holds onnx_config.json, the graphs (fp32 and any kept
variants) and tokenizer.json; the config names which variant each tower runs and how to preprocess.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from polymodal.data.images import ImageTransform
from polymodal.data.tokenizer import FastTokenizer
from polymodal.errors import PolymodalError
from polymodal.models.interface import EmbeddingInterface

log = logging.getLogger(__name__)

ONNX_CONFIG = "onnx_config.json"


def is_onnx_folder(path: str | Path) -> bool:
    return (Path(path) / ONNX_CONFIG).is_file()


def read_export_config(folder: str | Path) -> dict:
    path = Path(folder) / ONNX_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PolymodalError(f"cannot read {path}; pass a folder written by `polymodal export onnx`") from exc
    if not isinstance(config, dict):
        raise PolymodalError(f"{path} is not an export config; pass a folder written by `polymodal export onnx`")
    return config


def onnx_session(path: Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise PolymodalError("the ONNX runtime needs onnxruntime: pip install 'polymodal[onnx]'") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: graph-cleanup notes (unused initializers) are not the user's business
    # idle intra-op threads sleep instead of spinning: in a server the spinning starves the request threads
    # (benchmarks/serve_load.py)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxEmbeddingModel(EmbeddingInterface):
    """The EmbeddingModel interface (encode_image, encode_text, embed_pixels, classify, key, dim) over ONNX graphs."""


    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        config = read_export_config(folder)
        self.folder, self.config = folder, config
        self.name, self.version, self.dim = config["name"], config["version"], int(config["dim"])
        self.logit_scale = float(config["logit_scale"])
        self.transform = ImageTransform.from_dict(config["transform"])
        self.variants = {tower: config[tower]["variant"] for tower in ("image", "text")}
        self.image_session = onnx_session(folder / config["image"]["file"], threads)
        self.text_session = onnx_session(folder / config["text"]["file"], threads)
        t = config["text"]
        self.tokenizer = FastTokenizer(folder / t["tokenizer"], t["max_length"], t["pad_id"], t["pad_token"])
        self._text_inputs = {i.name for i in self.text_session.get_inputs()}

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [B, 3, H, W] -> float32 [B, dim], rows L2-normalised."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        return self.image_session.run(None, {"pixels": pixels})[0].astype(np.float32, copy=False)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        feeds = {k: v for k, v in self.tokenizer(texts).items() if k in self._text_inputs}
        return self.text_session.run(None, feeds)[0].astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OnnxEmbeddingModel({self.key}, image={self.variants['image']}, text={self.variants['text']})"


def load_onnx(folder: str | Path, **kwargs):
    """An export folder -> its runtime model: OnnxEmbeddingModel, OnnxFusionEncoder (VQA) or OnnxCaptioner."""
    kind = read_export_config(folder).get("type")
    if kind == "onnx_fusion_encoder":
        from polymodal.export.fusion_runtime import OnnxFusionEncoder

        return OnnxFusionEncoder(folder, **kwargs)
    if kind == "onnx_captioner":
        from polymodal.export.caption_runtime import OnnxCaptioner

        return OnnxCaptioner(folder, **kwargs)
    return OnnxEmbeddingModel(folder, **kwargs)
