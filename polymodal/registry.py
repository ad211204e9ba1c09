"""The front door: polymodal.load(name_or_path). Names come from a small dict; paths are local checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from polymodal.errors import PolymodalError


def _lite(**kw):
    from polymodal.models.conse import ConSEModel

    return ConSEModel(**kw)


def _builtin_dual_encoder(name: str) -> Callable:
    def build(**kw):
        from polymodal.models.dual_encoder import load_dual_encoder
        from polymodal.resources import HERE

        return load_dual_encoder(HERE / "models" / name)

    return build


def _builtin_fusion_encoder(name: str) -> Callable:
    def build(**kw):
        from polymodal.models.fusion_encoder import load_fusion_encoder
        from polymodal.resources import HERE

        folder = HERE / "models" / name
        if not folder.is_dir():
            raise PolymodalError(f"the built-in model {name!r} is not installed at {folder}; reinstall polymodal "
                                 "or rebuild it with benchmarks/easy_vqa.py --save-builtin")
        return load_fusion_encoder(folder)

    return build


MODELS: dict[str, Callable] = {"lite": _lite, "default": _builtin_dual_encoder("default")}
MODELS["easy-vqa"] = _builtin_fusion_encoder("easy-vqa")
DESCRIPTIONS = {
    "lite": "EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by ConSE (no paired training), 384-d",
    "default": "the lite towers with contrastive heads trained on Flickr8k + COCO captions (polymodal train contrastive)",
}
DESCRIPTIONS["easy-vqa"] = ("VQA fusion encoder (frozen lite towers: 7x7 image grid + question tokens, concat fusion) "
                            "trained on easy-VQA shapes and colours (benchmarks/easy_vqa.py); polymodal vqa IMAGE QUESTION")


def available_models() -> list[str]:
    return sorted(MODELS)


RUNTIMES = ("torch", "onnx")


def onnx_export_dir(name: str) -> Path:
    """Where `polymodal export onnx NAME` writes a built-in model's export by default."""
    from polymodal.cache import cache_dir

    return cache_dir() / "onnx" / name


def load(name_or_path: str | Path = "lite", runtime: str = "torch", **kwargs):
    """Return a ready model. A registered name (see available_models()) or a local checkpoint path: a folder
    written by `polymodal train`, a Hugging Face CLIP folder, or an OpenAI/open_clip-layout CLIP state dict.
    Nothing is downloaded.

    ``runtime="onnx"`` serves an export (`polymodal export onnx`) through onnxruntime without importing torch:
    pass the export folder, or a built-in name exported to its default folder (onnx_export_dir(name))."""
    key = str(name_or_path)
    if runtime not in RUNTIMES:
        raise PolymodalError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    from polymodal.export.runtime import OnnxEmbeddingModel, is_onnx_folder

    if runtime == "onnx":
        folder = Path(key).expanduser()
        if not is_onnx_folder(folder):
            folder = onnx_export_dir(key)
        if not is_onnx_folder(folder):
            raise PolymodalError(f"no ONNX export of {key!r} (looked in {key} and {folder}); "
                                 f"create it with `polymodal export onnx {key}` or pass an export folder")
        return OnnxEmbeddingModel(folder, **kwargs)
    if is_onnx_folder(Path(key).expanduser()):
        raise PolymodalError(f"{key} is an ONNX export; load it with runtime='onnx' (CLI: --runtime onnx)")
    if key in MODELS:
        return MODELS[key](**kwargs)
    path = Path(key).expanduser()
    if path.exists():
        from polymodal.models.clip import load_clip
        from polymodal.models.dual_encoder import is_dual_encoder_folder, load_dual_encoder

        if path.is_dir() and is_dual_encoder_folder(path):
            return load_dual_encoder(path)
        from polymodal.models.fusion_encoder import is_fusion_encoder_folder, load_fusion_encoder

        if path.is_dir() and is_fusion_encoder_folder(path):
            return load_fusion_encoder(path)

        return load_clip(path, **kwargs)
    raise PolymodalError(
        f"unknown model {key!r}: not a built-in name ({', '.join(available_models())}) and no such path; "
        "pass one of those names or a local checkpoint folder/file"
    )
