"""What a torch model is, for repr() and print(): a notebook cell ending in `model` showed nn.Module's ~300 lines of
layers. It now shows the model's kind and key, its parts, where it was loaded from and how it was trained (as
`polymodal info --model` says it); ``torch.nn.Module.__repr__(model)`` still lists the layers."""

from __future__ import annotations

from pathlib import Path

LAYERS_HINT = "layers: torch.nn.Module.__repr__(model)"


def summary(model, size: str, parts: list[tuple[str, str]]) -> str:
    """``Kind(name@version, size)`` and one indented line per part, then where the weights came from."""
    lines = [f"{type(model).__name__}({model.key}, {size})", *(f"  {label}: {value}" for label, value in parts)]
    folder = getattr(model, "loaded_from", None)
    if folder is None:
        lines.append("  loaded from: no folder (built in Python; trained only if you trained it since)")
    else:
        folder, built_in = Path(folder), _built_in(Path(folder))
        where = str(folder) if built_in is None else f"the built-in {built_in!r} ({folder})"
        lines += [f"  loaded from: {where}", *("  %s: %s" % row for row in _trained_with(model, folder, built_in))]
    return "\n".join([*lines, f"  {LAYERS_HINT}"])


def _built_in(folder: Path) -> str | None:
    """The built-in name of a folder shipped with polymodal, else None."""
    from polymodal.resources import HERE

    return folder.name if folder.resolve().parent == (HERE / "models").resolve() else None


def _trained_with(model, folder: Path, built_in: str | None) -> list[tuple[str, str]]:
    """[("trained with", the training command the folder records for these weights (its trained_with.json), briefly),
    and ("epoch kept", which) where the record says], or for a built-in without one [("about", what the registry
    says of it)]."""
    from polymodal.registry import DESCRIPTIONS
    from polymodal.trained_with import NOT_RECORDED, kept_text, read_trained_with, recorded_command, recorded_settings

    record = read_trained_with(folder)
    if record is None and built_in in DESCRIPTIONS:
        return [("about", DESCRIPTIONS[built_in])]
    if record is None:
        return [("trained with", NOT_RECORDED)]
    if record.get("version") not in (None, model.version):  # weights saved over the folder's since
        return [("trained with", "not recorded for these weights (the folder's trained_with.json describes others)")]
    seed = recorded_settings(record)[1].get("seed")
    seed = f", seed {seed}" if seed is not None else ""
    kept = kept_text(record)
    return [("trained with", f"{recorded_command(record)} (polymodal {record.get('polymodal')}{seed}; all of it: "
                             f"polymodal info --model {folder})"), *([("epoch kept", kept)] if kept else [])]


def tuned(n: int, what: str) -> str:
    """", last 2 blocks fine-tuned" for a tower part whose last n blocks/layers trained; "" for a frozen one."""
    return f", last {n} {what}{'' if n == 1 else 's'} fine-tuned" if n else ""


def image_tower(model) -> str:
    """The image tower's name, and its precision where polymodal.load(..., precision="bf16") switched it."""
    precision = getattr(model.image_tower, "precision", "fp32")
    return "EfficientNet-Lite0" + ("" if precision == "fp32" else f" ({precision} inference)")
