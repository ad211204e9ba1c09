"""A CLIP checkpoint told by its files alone, without loading it (no torch, no transformers, no tensor read): a
Hugging Face folder by its config.json's model_type, an OpenAI/open_clip-layout state dict by its key names (a
.safetensors header; a torch file's pickled index, whose tensors are never built). `serve --model CLIP` without an
index is refused with this before the load, which took 8-20 s to end in the same refusal."""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

from polymodal.models.folders import WEIGHT_SUFFIXES

OPENAI_MARKER = "visual.conv1.weight"  # the vision tower's patch embedding: OpenAI's and open_clip's ViT layout
_MAX_HEADER = 100 << 20  # a .safetensors header past this is no checkpoint's (a 1B-parameter CLIP's is ~100 kB)
# DataParallel/DDP's prefix and torch.compile's, in either order when both wrapped the model
_WRAPPERS = re.compile(r"^(?:module\.|_orig_mod\.)+")


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
    """The tensor names of a .safetensors file or a torch (zip) state dict, as `state_dict_of` gives them; [] for
    anything else (a legacy or TorchScript torch file, a broken one)."""
    try:
        found = state_dict_of(dict.fromkeys(safetensors_keys(file)) if file.suffix == ".safetensors"
                              else _torch_object(file))
    except Exception:  # noqa: BLE001 - a broken or foreign file is not known to be CLIP: polymodal.load says what
        return []
    return list(found or ())


def state_dict_of(checkpoint) -> dict | None:
    """A checkpoint's state dict as CLIP loading reads it: the checkpoint itself or its "state_dict" (open_clip's
    training checkpoints), each key without the prefixes wrappers add (_WRAPPERS: an open_clip run on several GPUs
    saves "module.visual..."); None where it holds none (not a dict, or a key that is not a string)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) for k in checkpoint):
        return None
    return {_WRAPPERS.sub("", k): v for k, v in checkpoint.items()}


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


def _torch_object(file: Path):
    """What a torch zip file pickles, its tensors left unbuilt (_KeysOnly); None without one data.pkl."""
    with zipfile.ZipFile(file) as archive:
        pickled = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickled) != 1:
            return None
        with archive.open(pickled[0]) as f:
            return _KeysOnly(f).load()
