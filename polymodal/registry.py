"""The front door: polymodal.load(name_or_path). Names come from a small dict; paths are local checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from polymodal.errors import PolymodalError


def _lite(**kw):
    from polymodal.models.conse import ConSEModel

    return ConSEModel(**kw)


MODELS: dict[str, Callable] = {"lite": _lite}
DESCRIPTIONS = {"lite": "EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by ConSE (no paired training), 384-d"}


def available_models() -> list[str]:
    return sorted(MODELS)


def load(name_or_path: str | Path = "lite", **kwargs):
    """Return a ready model. A registered name (see available_models()) or a local checkpoint path:
    a Hugging Face CLIP folder, or an OpenAI/open_clip-layout CLIP state dict. Nothing is downloaded."""
    key = str(name_or_path)
    if key in MODELS:
        return MODELS[key](**kwargs)
    path = Path(key).expanduser()
    if path.exists():
        from polymodal.models.clip import load_clip

        return load_clip(path, **kwargs)
    raise PolymodalError(
        f"unknown model {key!r}: not a built-in name ({', '.join(available_models())}) and no such path; "
        "pass one of those names or a local checkpoint folder/file"
    )
