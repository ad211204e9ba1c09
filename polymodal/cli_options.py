"""Command-line options shared by several commands (torch-free: parsers are built before any model loads)."""

from __future__ import annotations

import functools
import os

from polymodal.errors import PolymodalError
from polymodal.eval.limit import add_limit
from polymodal.eval.per_item import add_item_options


def add_precision(parser, note: str = "") -> None:
    """--precision, read by load_model (note: what the command's models add to the help)."""
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="image inference precision for the PyTorch runtime: bf16 runs a frozen bf16 graph of the "
        f"EfficientNet-Lite0 tower, faster on CPUs with bf16 instructions (1.1-1.2x fp32 here{note}; default fp32)",
    )


def add_quiet(parser) -> None:
    """--quiet: no progress bars on stderr (warnings and errors still go there). The bars pass tqdm's disable=
    themselves, which overrides tqdm's TQDM_DISABLE variable, so the flag is the way to turn them off."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


EMBED_RUNTIME_HELP = ("onnx: embed with --model's export through onnxruntime (a built-in name once `polymodal export "
                      "onnx NAME` has run, or an export folder): lite embeds photos ~2x faster on a CPU; same model "
                      "key, so an index built with either runtime searches with the other")


def add_runtime(parser, help: str = EMBED_RUNTIME_HELP, from_index: bool = False) -> None:
    """--runtime (default auto: onnx for an export folder, else torch); `resolve_runtime` settles auto after parsing.
    from_index: the command falls back to the index's model without --model."""
    which = "--model, or without it the index's model," if from_index else "--model"
    parser.add_argument("--runtime", choices=("auto", "torch", "onnx"), default="auto",
                        help=f"{help} (default auto: onnx when {which} is an export folder, else torch)")


def add_eval_options(parser, limit_note: str, runtime_help: str = EMBED_RUNTIME_HELP, precision_note: str = "") -> None:
    """The options each eval command that scores items one by one (retrieval, zeroshot, images, vqa) ends with:
    --limit, --runtime, --precision, --quiet, then the per-item outputs and checks (--out, --page, --split, --strict,
    --ci). `eval captions` has its own (corpus scores: no --ci; decoding options between)."""
    add_limit(parser, note=limit_note)
    add_runtime(parser, runtime_help)
    add_precision(parser, precision_note)
    add_quiet(parser)
    add_item_options(parser)


def resolve_runtime(args) -> None:
    """--runtime auto becomes onnx when the model (--model) is an export folder, torch otherwise, so
    that the commands' checks and JSON lines see the runtime that runs. Without a model (search uses the index's) it
    stays auto and polymodal.load settles it from the folder it loads; `serve` settles it per model it loads."""
    model = getattr(args, "model", None)
    if getattr(args, "runtime", None) != "auto" or not model or getattr(args, "runtime_per_model", False):
        return
    from polymodal.registry import settled_runtime  # (registry imports no torch)

    args.runtime = settled_runtime("auto", model)


def index_model_name(index, model_arg: str | None, new_index_model: str | None = None) -> str:
    """--model, else the model the index records (``new_index_model`` for an index not made yet); one line when the
    index was built from a model folder since moved."""
    if model_arg:
        return model_arg
    if new_index_model is not None and not index.exists():
        return new_index_model
    name = index.info()["model_name"]
    if os.sep in name and not os.path.exists(name):
        raise PolymodalError(f"{index.where()} was built with the model at {name}, which is no longer there; pass "
                             "--model with where that model is now")
    return name


def load_model(args, name: str, index=None):
    """polymodal.load(name) with the command's --runtime and --precision (the commands that have them) and, when
    `name` is the model of `index` (a local index or a collection), the loader options it recorded (tokenizer=)."""
    import polymodal
    from polymodal.registry import recorded_options_for

    runtime = getattr(args, "runtime", "auto")
    options = recorded_options_for(index.info(), name, runtime) if index is not None and index.exists() else {}
    try:
        return polymodal.load(name, runtime=runtime, precision=getattr(args, "precision", "fp32"), **options)
    except PolymodalError as exc:
        if error := old_index_model(index, name, exc):
            raise error from None
        raise


def old_index_model(index, name: str, exc: Exception) -> PolymodalError | None:
    """The error for an index whose recorded model name loads nothing, or None. Indexes built by polymodal before it
    recorded a trained model's folder name the model by its kind ('dual-encoder'): "unknown model 'dual-encoder'"
    read as if the user had typed that name."""
    from polymodal.registry import MODELS  # (torch-free)

    if (index is None or name in MODELS or os.path.exists(name) or f"unknown model {name!r}" not in str(exc)
            or not index.exists() or index.info().get("model_name") != name):
        return None
    return PolymodalError(f"{index.where()} records its model only as {name!r}, no built-in name or path (an index "
                          "built by an older polymodal with a trained model); pass --model with that model's folder")


def how_it_ran(model, args) -> dict:
    """For an eval command's JSON line: an ONNX export's graphs that ran per tower (fp32 or a gated int8/bf16 one),
    else the PyTorch --precision."""
    return {"variants": model.variants} if hasattr(model, "variants") else {"precision": args.precision}


def add_run_options(parser) -> None:
    """--resume / --overwrite / --quiet of a training command (polymodal.cli_train.run_recipe reads them)."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its checkpoint, model, metrics and TensorBoard logs)")
    add_quiet(parser)


def add_qdrant(parser, what: str) -> None:
    """--qdrant and --collection (the Qdrant backend needs the qdrant extra; the key comes from QDRANT_API_KEY)."""
    parser.add_argument("--qdrant", metavar="URL", help=f"{what}; the API key is read from QDRANT_API_KEY")
    parser.add_argument("--collection", help="the Qdrant collection (default: polymodal)")


def qdrant_collection(args):
    """The QdrantCollection that --qdrant/--collection name, or None without --qdrant."""
    if args.qdrant is None:  # `--qdrant ""` (an unset variable) is a mistake, not "no Qdrant": refused below
        if args.collection:
            from polymodal.errors import PolymodalError

            raise PolymodalError("--collection names a Qdrant collection; pass --qdrant URL with it")
        return None
    from polymodal.index.qdrant import DEFAULT_COLLECTION, QdrantCollection

    return QdrantCollection(args.qdrant, args.collection or DEFAULT_COLLECTION)


# the TrainConfig settings of train captioner, vqa and pretrain, one flag each (flag -> (recipe section, type));
# train contrastive's TRAIN_FLAGS has these and two more among them, in its own --help order
TRAIN_LOOP_FLAGS = {
    "epochs": ("train", int), "lr": ("train", float), "weight_decay": ("train", float),
    "warmup_steps": ("train", int), "grad_clip": ("train", float), "seed": ("train", int),
    "patience": ("train", int), "log_every": ("train", int),
}
# the fusion encoders' architecture flags (train vqa, train pretrain)
FUSION_ARCH_FLAGS = {
    "fusion": ("arch", str), "dim": ("arch", int), "dropout": ("arch", float), "image_size": ("arch", int),
}

# what the settings every trainer shares mean (each command's own helps add to or override these)
TRAIN_HELPS = {
    "epochs": "passes over the training data",
    "lr": "peak learning rate of the trained parts (AdamW; linear warmup, then cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear warmup steps before the cosine decay; unset: the recipe's own, shortened for a short run",
    "grad_clip": "clip the gradients' global norm to this; 0 = no clipping",
    "seed": "seed of the initial weights, the data order, dropout and the validation split",
    "patience": "stop after this many epochs without a better validation score (training loss when nothing validates); 0 = never",
    "log_every": "write a train row to RUN/metrics.jsonl every N steps",
    "val_fraction": "share of the photos (with all their rows) split off for validation when no validation file is "
                    "given",
    "label_smoothing": "label smoothing of the classification loss (0 = none)",
    "workers": "DataLoader worker processes (0: the main process)",
    "split": "read only the rows whose \"split\" (JSON field or CSV column, as eval's --split) is one of these "
             "comma-separated names (Karpathy's files: train,restval); unset: every row",
    "val_split": "the same for the validation file, e.g. val",
    # the fusion encoders' (train vqa, train pretrain)
    "dim": "width of the fused tokens",
    "dropout": "dropout of the projections, the fusion and the heads",
    "image_size": "side the photo is resized and centre-cropped to, a multiple of 32 (224: a 7x7 grid of tokens)",
}


# --config of every train command: a run's own record is such a file too (`--config runs/a/train_config.json --out
# runs/b --seed 1` trains run a again with another seed)
CONFIG_HELP = "JSON or TOML with the same keys as the flags, or a run's own RUN/train_config.json; flags override it"


def add_recipe_flags(parser, flags: dict, recipe: str, helps: dict | None = None) -> None:
    """One --flag per recipe setting (flags: {key: (section, type)}); `--help` shows the recipe's default, what a run
    uses unless the flag or --config sets it. recipe: "module:Class", imported only when help is shown (the recipes
    import torch, which commands like `index --runtime onnx` never load)."""
    for key, (section, typ) in flags.items():
        text = {**TRAIN_HELPS, **(helps or {})}.get(key)
        if not (text and "default" in text):
            text = f"{text} (default: %(recipe_default)s)" if text else "default: %(recipe_default)s"
        action = parser.add_argument("--" + key.replace("_", "-"), type=typ, default=None, help=text)
        action.recipe_default = _RecipeDefault(recipe, section, key)  # argparse fills %(...)s from the action


class _RecipeDefault:
    """A recipe setting's default, looked up when argparse formats the help that names it."""

    def __init__(self, recipe: str, section: str, key: str) -> None:
        self.recipe, self.section, self.key = recipe, section, key

    def __str__(self) -> str:
        recipe = _default_recipe(self.recipe)
        value = getattr(getattr(recipe, self.section) if self.section else recipe, self.key, None)
        return "unset" if value in (None, "") else str(value)


@functools.lru_cache(maxsize=None)
def _default_recipe(recipe: str):
    import dataclasses
    import importlib

    module, name = recipe.split(":")
    cls = getattr(importlib.import_module(module), name)
    required = {f.name: [] if f.name in ("pairs", "qa") else "x" for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    return cls(**required)
