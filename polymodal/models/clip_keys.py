"""A CLIP checkpoint told by its files alone, without loading it (no torch, no transformers, no tensor read): a
Hugging Face folder by its config.json's model_type, an OpenAI/open_clip-layout state dict by its key names (a
.safetensors header; a torch file's pickled index, zip or legacy, whose tensors are never built; a TorchScript
archive's pickled module tree, as OpenAI's own .pt files are). `serve --model CLIP` without an index is refused with
this before the load, which took 8-20 s to end in the same refusal."""

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
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file
_MAX_DEPTH = 64  # module nesting read in a TorchScript archive (a CLIP's is ~6 deep)
# a torch file's pickled index read (a CLIP's: ~30 kB-1 MB): unpickling holds several times its size (8x of None)
_MAX_PICKLE = 16 << 20
_MAX_MODULES = 100_000  # modules walked in a TorchScript tree (a CLIP's: ~300); shared submodules are walked per path


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
    """The tensor names of a .safetensors file, a torch state dict (zip or legacy) or a TorchScript archive, as
    `state_dict_of` gives them (a TorchScript module's as its state_dict() names them); [] for anything else (a
    broken file, a pickled Python object, a format torch no longer reads)."""
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
    """What every pickled object but a dict or a tensor becomes: whatever a checkpoint holds is never built (nor any
    code of the file's choosing run), so reading keys is safe and takes no memory. Its attributes (the state a
    TorchScript module is pickled with) are kept as read: names, and more such objects."""

    state = None

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state if isinstance(state, dict) else None


class _Tensor(_Anything):
    """A tensor (torch._utils' rebuild functions), its storage left in the file."""


class _Dict(OrderedDict):
    """An OrderedDict that copies nothing it is built or set with: ``OrderedDict(other)`` a few bytes of pickle apart
    made each a copy of one large dict (a 121 kB file took 291 MB; 260 kB, ~29 GB). State dicts pickle it empty and
    fill it item by item (SETITEMS); its pickled attributes (a state dict's _metadata) are not needed here."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __setstate__(self, state) -> None:
        pass


class _KeysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return _Dict
        return _Tensor if module == "torch._utils" and name.startswith("_rebuild_") else _Anything

    def persistent_load(self, pid):
        return None  # a tensor's storage, left in the archive


def _torch_object(file: Path):
    """What a torch file pickles, its tensors left unbuilt (_KeysOnly): a zip file's one data.pkl (a TorchScript
    archive's module as its tensors by name), or a legacy file's object; None for neither."""
    if not zipfile.is_zipfile(file):
        return _legacy_object(file)
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        pickled = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickled) != 1 or archive.getinfo(pickled[0]).file_size > _MAX_PICKLE:
            return None
        with archive.open(pickled[0]) as f:
            found = _KeysOnly(f).load()
    # torch.load hands an archive with constants.pkl to torch.jit.load (polymodal's loader too): a module tree
    torchscript = pickled[0].replace("data.pkl", "constants.pkl") in names
    return dict(_module_tensors(found)) if torchscript else found


def _legacy_object(file: Path):
    """A legacy torch file (torch.save(..., _use_new_zipfile_serialization=False)) is pickles in a row: a magic
    number, the format's version, the machine's sizes, then the object; its tensors' bytes follow."""
    with open(file, "rb") as f:
        if f.read(1) != b"\x80":  # no pickle (its PROTO opcode) at all: not read further
            return None
        f.seek(0)
        capped = _Capped(f, _MAX_PICKLE)
        if _KeysOnly(capped).load() != _LEGACY_MAGIC:
            return None
        for _ in range(2):  # the version and the sizes
            _KeysOnly(capped).load()
        return _KeysOnly(capped).load()


class _Capped:
    """``file`` read by pickle through at most ``left`` bytes (a legacy file's pickles come before its tensors' bytes,
    with no size ahead of them): one reading past it raises."""

    def __init__(self, file, left: int) -> None:
        self.file, self.left = file, left

    def read(self, size: int = -1) -> bytes:
        return self._took(self.file.read(self.left + 1 if size is None or size < 0 or size > self.left else size))

    def readline(self) -> bytes:
        return self._took(self.file.readline(self.left + 1))

    def peek(self, size: int = 0) -> bytes:  # pickle reads ahead by it (a read per opcode without: ~2 s a MB)
        return self.file.peek(size)[: self.left + 1]

    def _took(self, data: bytes) -> bytes:
        if len(data) > self.left:
            raise ValueError(f"a pickle past {_MAX_PICKLE} bytes is no checkpoint's index")
        self.left -= len(data)
        return data


def _module_tensors(module, prefix: str = "", depth: int = 0, walked: list | None = None):
    """(name, tensor) for each tensor attribute of a TorchScript module and its submodules, named by their path
    ("visual.conv1.weight") as the loaded module's state_dict() names them. A tree of more than _MAX_MODULES paths
    raises: a file of a few hundred bytes can share one submodule twice per level (2**64 paths at _MAX_DEPTH)."""
    if not isinstance(module, _Anything) or module.state is None or depth > _MAX_DEPTH:
        return
    walked = [0] if walked is None else walked
    walked[0] += 1
    if walked[0] > _MAX_MODULES:
        raise ValueError(f"a TorchScript tree of more than {_MAX_MODULES} modules is no CLIP's")
    for name, value in module.state.items():
        if isinstance(value, _Tensor):
            yield f"{prefix}{name}", value
        elif isinstance(name, str):
            yield from _module_tensors(value, f"{prefix}{name}.", depth + 1, walked)
