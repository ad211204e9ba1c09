"""A CLIP checkpoint told by its files alone, without loading it (no torch, no transformers, no tensor read): a
Hugging Face folder by its config.json's model_type, an OpenAI/open_clip-layout state dict by its key names (a
.safetensors header; a torch file's pickled index, whose tensors are never built). `serve --model CLIP` without an
index is refused with this before the load, which took 8-20 s to end in the same refusal."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

from polymodal.models.folders import WEIGHT_SUFFIXES

OPENAI_MARKER = "visual.conv1.weight"  # the vision tower's patch embedding: OpenAI's and open_clip's ViT layout
_MAX_HEADER = 100 << 20  # a .safetensors header past this is no checkpoint's (a 1B-parameter CLIP's is ~100 kB)


def is_openai_layout(keys) -> bool:
    return OPENAI_MARKER in set(keys)


def is_clip_checkpoint(path: str | Path) -> bool:
    """True for a Hugging Face CLIP folder (config.json's model_type "clip"), an OpenAI-layout state dict file, or
    a folder without config.json holding one such file (as polymodal.load reads them); False for the unknown."""
    path = Path(path).expanduser()
    if path.is_file():
        return is_openai_layout(state_dict_keys(path))
    if not path.is_dir():
        return False
    if (path / "config.json").is_file():
        try:
            return json.loads((path / "config.json").read_text()).get("model_type") == "clip"
        except (OSError, ValueError, AttributeError):
            return False
    files = [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    return len(files) == 1 and is_openai_layout(state_dict_keys(files[0]))


def state_dict_keys(file: Path) -> list[str]:
    """The tensor names of a .safetensors file or a torch (zip) state dict, plain or under "state_dict"; [] for
    anything else (a legacy or TorchScript torch file, a broken one)."""
    try:
        return safetensors_keys(file) if file.suffix == ".safetensors" else _torch_keys(file)
    except Exception:  # noqa: BLE001 - a broken or foreign file is not known to be CLIP: polymodal.load says what
        return []


def safetensors_keys(file: Path) -> list[str]:
    """The tensor names in a .safetensors file's header (8 bytes of its length, then JSON)."""
    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > _MAX_HEADER:
            raise ValueError(f"{file} has no safetensors header")
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


class _Anything:
    """What every pickled object but a dict becomes: tensors, storages and whatever else a checkpoint holds are
    never built (nor any code of the file's choosing run), so reading keys is safe and takes no memory."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class _KeysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return OrderedDict if (module, name) == ("collections", "OrderedDict") else _Anything

    def persistent_load(self, pid):
        return None  # a tensor's storage, left in the archive


def _torch_keys(file: Path) -> list[str]:
    with zipfile.ZipFile(file) as archive:
        pickled = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickled) != 1:
            return []
        with archive.open(pickled[0]) as f:
            sd = _KeysOnly(f).load()
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return [k for k in sd if isinstance(k, str)] if isinstance(sd, dict) else []
