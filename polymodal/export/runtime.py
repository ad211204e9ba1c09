"""Serve an exported embedding model through onnxruntime: numpy + Pillow preprocessing, a `tokenizers` tokenizer,
no torch import (``polymodal.load(name_or_folder, runtime="onnx")``).

The export folder (written by `polymodal export onnx`) holds onnx_config.json, the graphs it serves (with
--keep-unserved also the others it tried) and tokenizer.json; the config names which variant each tower runs and
how to preprocess.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from polymodal.data.images import ImageTransform
from polymodal.cpus import usable_cpus
from polymodal.data.tokenizer import FastTokenizer, warn_once_if_cut, warn_once_if_unknown
from polymodal.errors import PolymodalError
from polymodal.models.inputs import as_pixels
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


GRAPHS = {"onnx_fusion_encoder": ("grid", "question", "head"), "onnx_captioner": ("prefix", "step")}
EXPORT_TYPES = ("onnx_embedding", *GRAPHS)  # the kinds of export this polymodal writes and runs


def graph_files(config: dict) -> dict[str, str]:
    """Graph -> the file its runtime loads: the config's choice, else GRAPH.onnx (the fp32 graph); an embedding
    export names both towers' files."""
    if config.get("type") in GRAPHS:
        graphs = GRAPHS[config["type"]] + (("match",) if config.get("itm_head") else ())  # a VQA model's ITM head
        return {**{g: f"{g}.onnx" for g in graphs}, **config.get("files", {})}
    return {tower: config[tower]["file"] for tower in ("image", "text")}


def graph_variants(files: dict[str, str]) -> dict[str, str]:
    """The variant each graph file runs, e.g. {"prefix": "fp32", "step": "int8_dynamic"} (GRAPH.VARIANT.onnx, or
    GRAPH.onnx for fp32): an evaluation names them, as int8 answers and captions differ from fp32 ones."""
    return {graph: file.split(".")[1] if file.count(".") == 2 else "fp32" for graph, file in files.items()}


def drop_unserved(folder: Path, config: dict) -> list[str]:
    """Delete the graphs an export tried but its runtime does not load (the fp32 graph a faster int8 variant
    replaced, a kept but slower variant): a deployment copies only what it runs. Only the names an export writes
    (GRAPH.onnx, GRAPH.VARIANT.onnx) are candidates: other files in the folder stay. -> the names deleted."""
    from polymodal.export.variants import VARIANTS

    graphs = GRAPHS.get(config.get("type"))
    if graphs is None:  # an embedding export writes image.fp32.onnx, never image.onnx
        written = {f"{g}.{v}.onnx" for g in ("image", "text") for v in ("fp32", *VARIANTS)}
    else:
        written = {f"{g}.onnx" for g in graphs} | {f"{g}.{v}.onnx" for g in graphs for v in VARIANTS}
    served = set(graph_files(config).values())
    gone = sorted(p.name for p in Path(folder).glob("*.onnx") if p.name in written - served)
    for name in gone:
        (Path(folder) / name).unlink()
    return gone


def removed_line(report: dict) -> list[str]:
    """The report.md line naming the graphs drop_unserved deleted (none: no line)."""
    if not report.get("removed"):
        return []
    gone = report["removed"]
    keeps = "keeps them" if len(gone) > 1 else "keeps it"
    return [f"Deleted after choosing, not served: {', '.join(gone)} (`--keep-unserved` {keeps}).", ""]


class GraphLoadError(PolymodalError):
    """onnxruntime refused a graph file; ``said``: its reason, in a few words. An export trying a variant reports that
    reason (variants.failure_reason): the graph it has just built is no damaged export, and the advice to export again
    (into its temporary folder) is no advice there."""

    def __init__(self, message: str, said: str) -> None:
        super().__init__(message)
        self.said = said


def onnx_session(path: Path, threads: int | None = None, inputs: set[str] | None = None):
    """An onnxruntime session of one graph of an export; a missing or damaged file, or a graph without the
    ``inputs`` expected of it, is one clear error that says to export again."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise PolymodalError("the ONNX runtime needs onnxruntime: pip install 'polymodal[onnx]'") from exc
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise PolymodalError(f"threads must be a whole number of at least 1 (0 or None: onnxruntime's default), "
                             f"got {threads!r}")
    path = _export_file(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: graph-cleanup notes (unused initializers) are not the user's business
    # idle intra-op threads sleep instead of spinning: in a server the spinning starves the request threads
    # (benchmarks/serve_load.py)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # onnxruntime sizes its default pool by the machine's cores: under taskset, a cpuset or a CPU quota it would
    # start more threads than can run (None: fewer cannot be, its default is right)
    threads = threads or usable_cpus()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...) for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        newer = _newer_format(str(exc))
        if type(exc).__name__ == "NotImplemented" or newer:  # a sound graph with an operator this build has no
            # kernel for, or stamped with an IR version or opset it does not know (a newer exporter made it)
            raise GraphLoadError(
                f"{path} cannot run on this onnxruntime ({ort.__version__}): {newer or first}"
                f"{_made_with(path.parent, ort.__version__)}. Install a newer onnxruntime (pip install -U "
                f"onnxruntime), or export the model again here (`polymodal export onnx MODEL --out {path.parent}`): "
                "the export keeps only the variants this onnxruntime runs", newer or first) from exc
        raise GraphLoadError(str(damaged_export(path.parent, f"{path.name} cannot be loaded: {first}")), first) from exc
    missing = (inputs or set()) - {i.name for i in session.get_inputs()}
    if missing:
        raise damaged_export(path.parent, f"{path.name} is not the graph expected there (no input {sorted(missing)})")
    return session


def shrink_arena():
    """onnxruntime's run options that hand a session's unused arena memory back to the system after the run (it keeps
    the memory of a session's largest batch for the session's life otherwise)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing): the CLI serves every
    allocation from the heap (cli._keep_freed_memory), so an arena shrink_arena gave back stayed resident there,
    and `export onnx lite` peaked 0.2 GB higher with the shrinking than without."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no glibc (musl, macOS: no malloc_trim; Windows: no CDLL(None))
        pass


def _newer_format(error: str) -> str | None:
    """onnxruntime's reason for refusing a graph newer than it knows, in a few words (its message starts with a C++
    signature that hid the reason within the first 200 characters), or None for any other error."""
    import re

    if m := re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", error):
        return f"the graph's IR version is {m[1]}, this onnxruntime reads up to {m[2]}"
    if m := re.search(r"Opset (\d+) is under development.*?is till opset (\d+)", error, re.S):
        return f"the graph uses opset {m[1]}, this onnxruntime knows up to {m[2]}"
    return None


def _made_with(folder: Path, here: str) -> str:
    """" (it was exported with onnxruntime X)", from its report.json's made_with, when that names another version."""
    try:
        made = json.loads((folder / "report.json").read_text())["made_with"]["onnxruntime"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f" (it was exported with onnxruntime {made})" if made != here else ""


# what every export polymodal wrote holds in its transform (crop_box came later: older exports lack it)
TRANSFORM_KEYS = ("resize", "crop", "mean", "std", "resample")


def export_transform(folder: Path, config: dict) -> ImageTransform:
    """The export's preprocessing. A key a newer polymodal added (unknown here) is a warning, not damage: the
    export is still read with the keys this one knows. A known key missing (it would take a default size or
    mean) or invalid is the damaged-export error, via load_onnx."""
    import dataclasses

    from polymodal import __version__

    transform = dict(config["transform"])
    if missing := [k for k in TRANSFORM_KEYS if k not in transform]:
        raise damaged_export(folder, f"{ONNX_CONFIG}'s transform lacks {', '.join(missing)}")
    known = {f.name for f in dataclasses.fields(ImageTransform)}
    if extra := sorted(set(transform) - known):
        log.warning("%s: the transform in %s holds %s, which this polymodal (%s) does not know (a newer one made the "
                    "export?); preprocessing without it: upgrade polymodal if the results look off", folder,
                    ONNX_CONFIG, ", ".join(extra), __version__)
    return ImageTransform.from_dict({k: v for k, v in transform.items() if k in known})


def damaged_export(folder: Path, what: str) -> PolymodalError:
    return PolymodalError(f"{folder} is an incomplete or damaged export ({what}); export the model again with "
                          f"`polymodal export onnx MODEL --out {folder}`")


def _export_file(path: str | Path) -> Path:
    """A file an export's config names, or the damaged-export error when it is not there."""
    path = Path(path)
    if not path.is_file():
        raise damaged_export(path.parent, f"{path.name} is missing")
    return path


def export_tokenizer(path: Path):
    """The tokenizers.Tokenizer saved in an export, or one clear error when the file is missing or damaged."""
    from tokenizers import Tokenizer

    path = _export_file(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise damaged_export(path.parent, f"{path.name} cannot be read: {exc}") from exc


class ReloadsFromFolder:
    """Pickled (multiprocessing, joblib) or deep-copied, an export's runtime model loads again from its folder:
    onnxruntime sessions cannot be pickled ("TypeError: cannot pickle 'InferenceSession' object"). Subclasses set
    ``self._reload = (folder, threads)`` in __init__."""

    def __reduce__(self):
        kept = {k: v for k, v in vars(self).items() if k in ("source", "load_options")}  # set by polymodal.load
        return _reloaded, (type(self), *self._reload, kept)


def _reloaded(cls, folder: str, threads, kept: dict):
    model = cls(folder, threads)
    vars(model).update(kept)
    return model


class OnnxEmbeddingModel(ReloadsFromFolder, EmbeddingInterface):
    """The EmbeddingModel interface (encode_image, encode_text, embed_pixels, classify, key, dim) over ONNX graphs."""


    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        config = read_export_config(folder)
        self.folder, self.config = folder, config
        self._reload = (str(folder), threads)
        self.name, self.version, self.dim = config["name"], config["version"], int(config["dim"])
        self.logit_scale = float(config["logit_scale"])
        self.transform = export_transform(folder, config)
        self.variants = {tower: config[tower]["variant"] for tower in ("image", "text")}
        self.texts_batch_independent = self.variants["text"] == "fp32"  # int8 scales a batch by its own range
        self.image_session = onnx_session(folder / config["image"]["file"], threads, {"pixels"})
        self.text_session = onnx_session(folder / config["text"]["file"], threads, {"input_ids"})
        t = config["text"]
        self.tokenizer = FastTokenizer(export_tokenizer(folder / t["tokenizer"]), t["max_length"], t["pad_id"],
                                       t["pad_token"])
        self._max_length = int(t["max_length"])
        self._text_inputs = {i.name for i in self.text_session.get_inputs()}
        for tower, session in (("image", self.image_session), ("text", self.text_session)):
            # the graphs fix the width: a config whose "dim" differs (edited, copied from another export) ended in
            # numpy's concatenate error on the first batch of more than one
            width = session.get_outputs()[0].shape[-1]
            if isinstance(width, int) and width != self.dim:
                raise damaged_export(folder, f"{ONNX_CONFIG} says dim {self.dim}, but {config[tower]['file']} "
                                             f"gives {width}-d vectors")

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixels [B, 3, H, W] -> float32 [B, dim], rows L2-normalised."""
        pixels = as_pixels(pixels)
        size = tuple(self.image_session.get_inputs()[0].shape[2:])  # the graph's, fixed at export
        if all(isinstance(n, int) for n in size) and pixels.shape[2:] != size:  # onnxruntime's error names none
            raise PolymodalError(f"this export's image graph takes pixels of {size[0]}x{size[1]} (model.transform"
                                 f"(images)), got {pixels.shape[2]}x{pixels.shape[3]}")
        return self.image_session.run(None, {"pixels": pixels})[0].astype(np.float32, copy=False)

    def text_lengths(self, texts: list[str]) -> list[int] | None:
        return self.tokenizer.counts(texts)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts)
        warn_once_if_cut(self, tokens["attention_mask"], self._max_length, "text tower",  # as the PyTorch model does
                         self.tokenizer.last_cut)
        warn_once_if_unknown(self, tokens["input_ids"], tokens["attention_mask"], self.tokenizer, texts,
                             "text tower")
        feeds = {k: v for k, v in tokens.items() if k in self._text_inputs}
        return self.text_session.run(None, feeds)[0].astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OnnxEmbeddingModel({self.key}, image={self.variants['image']}, text={self.variants['text']})"


def load_onnx(folder: str | Path, **kwargs):
    """An export folder -> its runtime model: OnnxEmbeddingModel, OnnxFusionEncoder (VQA) or OnnxCaptioner."""
    kind = read_export_config(folder).get("type")
    if kind is None:  # every export polymodal wrote names its kind
        raise damaged_export(Path(folder), f"{ONNX_CONFIG} names no type")
    if kind not in EXPORT_TYPES:  # another kind's keys must not be read as an embedding export's (or as damage)
        from polymodal import __version__

        raise PolymodalError(f"{folder} is an ONNX export of a kind this polymodal ({__version__}) does not know "
                             f"({str(kind)[:60]!r}; made by a newer polymodal?): upgrade polymodal, or export the model "
                             f"again with this one (`polymodal export onnx MODEL --out {folder}`)")
    if kind == "onnx_fusion_encoder":
        from polymodal.export.fusion_runtime import OnnxFusionEncoder as runtime
    elif kind == "onnx_captioner":
        from polymodal.export.caption_runtime import OnnxCaptioner as runtime
    else:
        runtime = OnnxEmbeddingModel
    try:
        return runtime(folder, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:  # a config entry missing or of the wrong kind
        raise damaged_export(Path(folder), f"{ONNX_CONFIG} lacks or garbles {exc}") from exc
