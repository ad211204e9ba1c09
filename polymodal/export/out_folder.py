"""The folder an export writes: checked before any work, then built in a hidden sibling that replaces it whole."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from polymodal.cache import check_creatable, staged_folder
from polymodal.errors import PolymodalError


def check_out_folder(out: Path, what: str) -> None:
    """Refuse an ``out`` the export cannot replace: a file, a folder holding files that are not an earlier export's
    (the export replaces the whole folder: they would be deleted), or one whose parent cannot be written (the
    export is built beside it). ``what`` names it in the messages ("--out DIR" for the CLI)."""
    from polymodal.export.runtime import is_onnx_folder

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PolymodalError(f"{what} is a file; pass a folder")
    # files a file manager leaves in any folder it shows (Finder's .DS_Store) are neither the user's data nor a
    # mistake: a new folder holding one is empty, and an earlier export holding one is still that export. Other
    # hidden files (.git, .env) may be the user's: the export replaces the whole folder, so they stay refused
    entries = sorted(p.name for p in out.iterdir() if not _os_metadata(p.name)) if out.is_dir() else []
    foreign = [name for name in entries if not _export_file(name)]
    if entries and not foreign and not is_onnx_folder(out):
        foreign = entries  # an earlier export always holds its config (it is moved into place whole)
    if foreign:  # the export replaces the whole folder: never delete files that are not an earlier export's
        raise PolymodalError(f"{what} holds files that are not a polymodal export ({', '.join(foreign[:3])}); "
                             "pass a new or empty folder")
    check_creatable(out.resolve().parent, what)


def staged_export(export: Callable[..., dict]) -> Callable[..., dict]:
    """For ``export(model, out, ...)`` (export_onnx and its kin): ``out`` is checked, then built in a hidden sibling
    that replaces it only once complete (cache.staged_folder). An export from Python wrote straight into ``out``:
    one interrupted half-way into an earlier export's folder left the new model's image graph beside the old one's
    text graph, which loaded as one model. Given a stage (`polymodal export` stages to add its own files), it fills
    that stage."""

    @functools.wraps(export)
    def staged(model, out: str | Path, *args, **kwargs) -> dict:
        check_out_folder(Path(out), f"out {out}")
        with staged_folder(out) as stage:
            report = export(model, stage, *args, **kwargs)
            if getattr(model, "loaded_from", None) is not None:  # an export from Python too says what the model
                # learned from and how (`eval` warns of those photos, `info --model` shows trained_with.json)
                from polymodal.training_photos import copy_training_records

                copy_training_records(model.loaded_from, stage)
            return report

    return staged


def _os_metadata(name: str) -> bool:
    """Finder's .DS_Store and ._ AppleDouble files, Windows Explorer's Thumbs.db and desktop.ini."""
    return name in (".DS_Store", "Thumbs.db", "desktop.ini") or name.startswith("._")


def _export_file(name: str) -> bool:
    """What `polymodal export onnx` writes: graphs, the tokenizer, its config and reports. Graphs only by the names
    an export gives them (image.fp32.onnx, step.int8_dynamic.onnx, ...): any *.onnx let a folder of the user's own
    ONNX models pass as an earlier export, and the export then replaced (deleted) them."""
    from polymodal.export.runtime import GRAPHS, ONNX_CONFIG
    from polymodal.export.variants import VARIANTS
    from polymodal.trained_with import FILE_NAME as TRAINED_WITH
    from polymodal.training_photos import FILE_NAME

    parts = ("image", "text", "match", *(g for graphs in GRAPHS.values() for g in graphs))
    graphs = {f"{g}.onnx" for g in parts} | {f"{g}.{v}.onnx" for g in parts for v in ("fp32", *VARIANTS)}
    return name in graphs or name in (ONNX_CONFIG, "tokenizer.json", "report.json", "report.md", FILE_NAME,
                                      TRAINED_WITH)
