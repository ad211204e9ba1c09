"""How a saved model was trained, kept beside its weights (trained_with.json), so that a model folder shared alone
(RUN/model without RUN/train_config.json) says how to train it again: the run's settings as train_config.json records
them (the seed, the data paths made absolute, the architecture), the command line and the polymodal that ran it.

Not inside config.json: the polymodal versions already installed refuse a config.json key they do not know ("saved by
a newer polymodal?"), so a model trained after this change would not load there, and config.json holds what builds
the model. No loader reads this file, and the model's key (name@version, its weights' hash) does not depend on it;
`polymodal info --model FOLDER` shows it. It travels with the model's ONNX export and with a copy saved from Python
(training_photos.copy_training_records)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError

FILE_NAME = "trained_with.json"
NOT_RECORDED = "not recorded (saved before polymodal recorded it, or not by `polymodal train`)"


def trained_with(settings: dict, call: str | None = None) -> dict:
    """The record of a run whose train_config.json holds ``settings`` (kept by reference: written as they are when
    the model is saved). ``call``: the training function as python_call() names it, recorded for a run started
    from Python."""
    from polymodal import __version__

    return {"polymodal": __version__, "source": _source_commit(), "command": _command(call), "settings": settings,
            "environment": environment()}


def environment() -> dict:
    """What else moves the weights of the same command and seed: torch's version and thread count (summation
    order; the float16 feature cache a run fills: heads trained on a cache filled at 2 threads differed from those at
    1 by up to 1.7e-3), and the numpy, transformers and Python that ran it. A run reading a cache filled earlier
    has that run's features, whatever its own thread count."""
    import platform
    from importlib import metadata

    import torch

    found = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in ("numpy", "transformers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {**found, "python": platform.python_version()}


def python_call(function, recipe, resume: bool = False) -> str:
    """How a run started from Python was called, e.g. polymodal.train.vqa.train_vqa(VQARecipe(...)): the recipe's
    keys are the record's settings."""
    return f"{function.__module__}.{function.__name__}({type(recipe).__name__}(...){', resume=True' if resume else ''})"


def write_trained_with(folder, record: dict) -> None:
    """The record, stamped with the version of the weights it describes (config.json's, written first): weights
    saved over them later (model.save() of a model changed in Python) keep the file but are not what it describes."""
    try:
        version = json.loads((Path(folder) / "config.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        version = None
    atomic_write_bytes(Path(folder) / FILE_NAME,
                       json.dumps({**record, "version": version}, indent=2, default=str).encode())


def read_trained_with(folder) -> dict | None:
    """The record in a model folder or export; None when it has none (saved before polymodal kept it, a built-in, an
    export made before exports carried it)."""
    try:
        record = json.loads((Path(folder) / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _command(call: str | None = None) -> list[str] | str:
    """This process's command line when it is polymodal's, `python -m polymodal` and the installed script both as
    "polymodal"; from Python, the call that trained and where it ran: sys.argv is then a Jupyter kernel's launcher
    (`ipykernel_launcher.py -f kernel-....json`, no way to run it again) or the user's script."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "polymodal" or Path(argv[0]).parts[-2:] == ("polymodal", "__main__.py")):
        return ["polymodal", *argv[1:]]
    first = Path(argv[0]) if argv else None
    if first is None or argv[0] in ("", "-c", "-m"):  # the interactive interpreter, python -c (-m: while importing)
        where = "in an interactive session or `python -c`"
    elif first.name in ("ipython", "ipython3") or first.parts[-2:] == ("IPython", "__main__.py"):  # (python -m IPython)
        # its command line says nothing of what was typed there either
        where = "in an IPython session"
    elif first.name == "ipykernel_launcher.py" or first.parts[-2:] == ("ipykernel", "__main__.py"):
        where = "in a Jupyter kernel"
    else:
        where = f"run as `{'python ' if first.suffix == '.py' else ''}{shlex.join(argv)}`"
    return f"from Python: {call or 'a polymodal.train function'} with the recipe in settings, {where}"


def _source_commit() -> str | None:
    """The git commit of this polymodal's source, when it runs from a checkout (__version__ stays the same over many
    commits); None for an installed package. Only a checkout whose root holds this package counts, not a repository
    that happens to hold the virtual environment it is installed in."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        # --no-optional-locks: --dirty would otherwise refresh (write) the checkout's .git/index at each run's start
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "describe", "--always", "--dirty",
                               "--abbrev=12"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def describe(name_or_path: str) -> dict:
    """`polymodal info --model`: a model folder's (or ONNX export's) type, key and how it was trained."""
    from polymodal.export.runtime import ONNX_CONFIG, is_onnx_folder
    from polymodal.registry import FOLDER_TYPES, MODELS, wrong_folder_hint
    from polymodal.training_photos import model_folder

    folder = model_folder(name_or_path)
    if folder is not None and not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"  # a run folder: its model (info takes it; loading commands ask for RUN/model)
    if folder is None or not ((folder / "config.json").is_file() or is_onnx_folder(folder)):
        if name_or_path in MODELS:
            raise PolymodalError(f"{name_or_path} is built from its towers when it loads: no model folder to describe")
        raise PolymodalError(f"--model {name_or_path}: not a model folder (a built-in name, a folder `polymodal "
                             "train` saved, such as RUN/model, or an ONNX export)")
    try:
        config = json.loads((folder / (ONNX_CONFIG if is_onnx_folder(folder) else "config.json")).read_text())
    except (OSError, ValueError) as exc:
        raise PolymodalError(f"cannot read the config of {folder} ({exc})") from exc
    config = config if isinstance(config, dict) else {}
    kind = config.get("type")
    if not is_onnx_folder(folder) and kind not in FOLDER_TYPES and config.get("model_type") != "clip":
        # a folder load refuses (a newer polymodal's type, a damaged "type", a list, null) is refused here too
        raise PolymodalError(wrong_folder_hint(folder) or f"{folder} holds no model polymodal loads: its config.json "
                             f"names type {repr(kind)[:60]}, not one of {', '.join(FOLDER_TYPES)}, and it is no "
                             "Hugging Face CLIP folder (model_type 'clip')")
    version = config.get("version")
    if kind == "yesno":  # one fit over another `default` than this polymodal's: refused as load refuses it
        from polymodal.models.yesno_base import check_fit_base

        check_fit_base(folder, config, str(version), None)
    record = read_trained_with(folder)
    details = {"folder": str(folder.resolve()), "type": kind,
               "key": f"{config.get('name')}@{version}" if version else None, "trained_with": record}
    if record is not None and record.get("version") not in (None, version):  # saved over since: not these weights'
        details.update(trained_with=None, trained_with_other_weights=record)
    return details


def _environment_row(env) -> str:
    """"torch 2.13.0+cpu at 1 thread, numpy 2.3.1, transformers 4.57.1, Python 3.11.2"; records written before it
    was kept have none."""
    if not isinstance(env, dict):
        return "not recorded (trained before polymodal recorded torch's version and thread count)"
    threads = env.get("threads")
    at = f" at {threads} thread{'' if threads == 1 else 's'}" if threads is not None else ""
    parts = [f"torch {env.get('torch')}{at}", *(f"{name} {env[name]}" for name in ("numpy", "transformers")
                                                 if env.get(name)), f"Python {env.get('python')}"]
    return ", ".join(parts)


def recorded_command(record: dict) -> str:
    """The record's command as one line: a CLI run's arguments joined, or the Python call it names."""
    command = record.get("command")
    return shlex.join(map(str, command)) if isinstance(command, list) else str(command)


def recorded_settings(record: dict) -> tuple[dict, dict]:
    """The record's settings and their "train" part ({} where either is missing or damaged)."""
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    return settings, settings.get("train") if isinstance(settings.get("train"), dict) else {}


def kept_text(record: dict) -> str | None:
    """The record's epoch kept (Trainer.kept(), written at each save) in words: "epoch 6 of 10, the best val/rsum
    4.374", "epoch 6 of 9 trained (--epochs 20), ..." after an early stop, or "the starting model (epoch 0),
    unchanged: no epoch of 3 beat its val/rsum 4.211"; None for a record saved before polymodal kept it (or
    damaged)."""
    kept = record.get("kept")
    if not isinstance(kept, dict) or not isinstance(kept.get("epoch"), int):
        return None
    # "of N" is the epochs the run trained; "asked" is there when that is fewer than its --epochs (an early stop)
    of = f"{kept.get('epochs')}" + (f" trained (--epochs {kept['asked']})" if kept.get("asked") is not None else "")
    if not kept.get("metric"):
        return f"epoch {kept['epoch']} of {of}, the last (no validation chose it)"
    value = kept.get("value")
    figure = f"{kept['metric']} {value:.4g}" if isinstance(value, (int, float)) else str(kept["metric"])
    if kept["epoch"] == 0:
        return f"the starting model (epoch 0), unchanged: no epoch of {of} beat its {figure}"
    return f"epoch {kept['epoch']} of {of}, the best {figure}"


def summary_rows(details: dict) -> list[tuple[str, str]]:
    """`polymodal info --model`'s table: (field, value) rows."""
    rows = [("folder", details["folder"]), ("type", str(details["type"])), ("key", str(details["key"]))]
    record = details["trained_with"]
    if details.get("trained_with_other_weights"):
        return [*rows, ("trained with", f"not recorded for these weights: trained_with.json describes weights "
                                        f"{details['trained_with_other_weights']['version']}, saved over since "
                                        "(--json shows it as trained_with_other_weights)")]
    if record is None:
        return [*rows, ("trained with", f"{NOT_RECORDED}; a run folder's train_config.json has its settings")]
    settings, train = recorded_settings(record)
    source = f" ({record['source']})" if record.get("source") else ""
    rows += [("trained by", f"polymodal {record.get('polymodal')}{source}"), ("command", recorded_command(record)),
             ("seed", str(train.get("seed"))), ("environment", _environment_row(record.get("environment")))]
    if kept := kept_text(record):
        rows.insert(-2, ("epoch kept", kept))  # after the command that chose how many epochs
    for label, keys in (("data", ("pairs", "qa")), ("validation data", ("val_pairs", "val_qa"))):
        files = next((settings[k] for k in keys if settings.get(k)), None)
        if files:
            rows.append((label, ", ".join(map(str, files)) if isinstance(files, list) else str(files)))
    if settings.get("model"):
        rows.append(("started from", str(settings["model"])))
    return [*rows, ("all settings", "--json shows them (model.trained_with.settings)")]
