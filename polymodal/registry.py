"""The front door: polymodal.load(name_or_path). Names come from a small dict; paths are local checkpoints."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

from polymodal.errors import PolymodalError


def _options(fn: Callable, skip: int = 0) -> list[str]:
    """The keyword options fn takes, after its first `skip` parameters (the folder or file it loads)."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_options(kwargs: dict, accepted: list[str], what: str) -> None:
    """Unknown keyword options to polymodal.load are one clear error, not a TypeError from a constructor."""
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = f"takes only {', '.join(accepted)}" if accepted else "takes no options"
        raise PolymodalError(f"polymodal.load got unknown option(s) {', '.join(unknown)} for {what}, which {takes}; "
                             "drop them")


def _lite(**kw):
    from polymodal.models.conse import ConSEModel

    _check_options(kw, _options(ConSEModel), "'lite'")
    return ConSEModel(**kw)


def _builtin(name: str, module: str, loader: str, rebuild: str) -> Callable:
    """A model shipped in polymodal/resources/models/NAME, loaded by module.loader(folder)."""

    def build(**kw):
        import importlib

        from polymodal.resources import HERE

        _check_options(kw, [], repr(name))

        folder = HERE / "models" / name
        if not folder.is_dir():
            raise PolymodalError(f"the built-in model {name!r} is not installed at {folder}; reinstall polymodal "
                                 f"or rebuild it with {rebuild}")
        return getattr(importlib.import_module(module), loader)(folder)

    return build


# built-ins that `polymodal export onnx` refuses, and why: a missing export is no fault of the user's
NO_ONNX = {"coco-yesno": "a logistic regression over the `default` and `lite` spaces, with no graph of its own"}

MODELS: dict[str, Callable] = {
    "lite": _lite,
    "default": _builtin("default", "polymodal.models.dual_encoder", "load_dual_encoder",
                        "recipes/default.json and scripts/ship_model.py"),
    "easy-vqa": _builtin("easy-vqa", "polymodal.models.fusion_encoder", "load_fusion_encoder",
                         "benchmarks/train_easy_vqa.py --save-builtin"),
    "coco-yesno": _builtin("coco-yesno", "polymodal.models.yesno", "load_yesno",
                           "benchmarks/coco_yesno.py --save-builtin"),
    "captioner": _builtin("captioner", "polymodal.models.captioner", "load_captioner",
                          "benchmarks/captioning.py --save-builtin"),
}
DESCRIPTIONS = {
    "lite": "EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by ConSE (no paired training), 384-d",
    "default": "the lite towers with contrastive heads trained on Flickr8k + COCO captions and word-swapped hard "
               "negatives (polymodal train contrastive --config default)",
    "easy-vqa": "VQA fusion encoder (frozen lite towers: 7x7 image grid + question tokens, concat fusion) "
                "trained on easy-VQA shapes and colours (benchmarks/train_easy_vqa.py); polymodal vqa IMAGE QUESTION",
    "coco-yesno": "yes/no questions about photos: question -> key phrase scored against the image with the "
                  "default and lite spaces (pool z-scores) + question embedding, logistic regression trained on "
                  "COCO yes/no VQA (benchmarks/coco_yesno.py); about 0.565 accuracy on photos it was not fit on "
                  "(majority answer 0.52)",
    "captioner": "writes a caption for a photo: the lite towers as a prefix language model (7x7 image grid pooled "
                 "to 10 prefix tokens, MiniLM with LoRA adapters decoding left to right) trained on Flickr8k + COCO "
                 "captions (benchmarks/captioning.py); polymodal caption IMAGE",
}


def available_models() -> list[str]:
    return sorted(MODELS)


def embeds(model) -> bool:
    """Maps images and texts into one space (lite, default, CLIP, trained dual encoders and their ONNX exports)."""
    return callable(getattr(model, "encode_image", None)) and callable(getattr(model, "encode_text", None))


def answers(model) -> bool:
    """Answers questions about an image (easy-vqa, coco-yesno, `polymodal train vqa` folders, their exports)."""
    return callable(getattr(model, "answer", None))


def captions(model) -> bool:
    """Writes captions for images (captioner, `polymodal train captioner` folders)."""
    return callable(getattr(model, "caption", None))


def names_an_embedder(name) -> bool:
    """True when ``name`` (a built-in name, a model or export folder, a CLIP checkpoint) is an embedding model by its
    name, config file or tensor names alone, before the slow load (serve without an index refuses one); False for
    others and for the unknown."""
    from polymodal.models.folders import folder_type
    from polymodal.resources import HERE

    if not isinstance(name, (str, os.PathLike)):
        return False
    if str(name) == "lite":  # the one built-in without a folder: ConSE over two pretrained towers
        return True
    folder = HERE / "models" / str(name) if str(name) in MODELS else Path(name).expanduser()
    kind = folder_type(folder)
    if kind is None and folder.is_dir():  # an ONNX export names its kind in its own config
        from polymodal.export.runtime import is_onnx_folder, read_export_config  # (numpy, tokenizers: folders only)

        try:
            kind = read_export_config(folder).get("type") if is_onnx_folder(folder) else None
        except PolymodalError:  # an unreadable one: polymodal.load says so
            pass
    if kind is None and str(name) not in MODELS:  # a Hugging Face CLIP folder or a CLIP state dict: always embeds
        from polymodal.models.clip_keys import is_clip_checkpoint

        return is_clip_checkpoint(folder)
    return kind in ("dual_encoder", "onnx_embedding")


def _require(model, name, can: bool, lacks: str, other: str, use: str):
    if isinstance(model, (str, os.PathLike)):  # ImageIndex(...).update(folder, "lite") from Python
        raise PolymodalError(f"got the model name {str(model)!r} where a loaded model goes; pass "
                             f"polymodal.load({str(model)!r})")
    if not can:
        raise PolymodalError(f"model {str(name or getattr(model, 'name', model))!r}{other} {lacks}; use {use} "
                             "(polymodal info lists them)")
    return model


def require_embedding(model, name=None):
    """The model, or one PolymodalError before any work (or any file written) when it cannot embed images."""
    return _require(model, name, embeds(model), "cannot embed images", _kind_of_non_embedder(model),
                    "an embedding model such as 'lite' or 'default'")


def _kind_of_non_embedder(model) -> str:
    """What a model that cannot embed is, for require_embedding's message: a fusion model that was only pretrained
    has answer() but no VQA head yet, and "a VQA model" sent its user looking for answers it cannot give."""
    if not answers(model):
        return ""
    if getattr(model, "vqa_head", "") is None:
        return " is a pretrained fusion model (no VQA head: `polymodal train vqa --model` fine-tunes it) and"
    return " is a VQA model and"


def require_captioner(model, name=None):
    """The model, or one PolymodalError when it cannot write captions (CLI, serve and train captioner share it)."""
    return _require(model, name, captions(model), "does not write captions", "",
                    "'captioner' or a folder written by `polymodal train captioner` (to rank your own captions "
                    "instead: polymodal search --texts FILE --image IMAGE)")


def require_vqa(model, name=None):
    """The model, or one PolymodalError when it cannot answer questions (the converse of require_embedding)."""
    return _require(model, name, answers(model), "does not answer questions",
                    " is an embedding model and" if embeds(model) else "", "a VQA model such as 'easy-vqa' or 'coco-yesno'")


RUNTIMES = ("auto", "torch", "onnx")


def settled_runtime(runtime: str, name_or_path: str | Path) -> str:
    """``runtime``, with "auto" settled: onnx for an ONNX export folder, torch for anything else (built-in names
    too, even when exported)."""
    if runtime != "auto":
        return runtime
    if str(name_or_path) in MODELS:  # the name, even beside a folder called so (./default): load() takes the name
        return "torch"
    from polymodal.export.runtime import is_onnx_folder  # torch-free

    return "onnx" if is_onnx_folder(Path(name_or_path).expanduser()) else "torch"


def onnx_export_dir(name: str) -> Path:
    """Where `polymodal export onnx NAME` writes a built-in model's export by default."""
    from polymodal.cache import cache_dir

    return cache_dir() / "onnx" / name


_UNRECORDED = {"threads"}  # runtime settings: the same vectors whatever their value


def _recorded_options(kwargs: dict) -> dict:
    """The loader options an index records beside the model's name, so that `search --db` / `index --db` load the
    same model again (a tokenizer folder, hidden_act, lite's top_k): JSON values, paths made absolute."""
    out = {}
    for key, value in sorted(kwargs.items()):
        if key in _UNRECORDED or value is None:
            continue
        if key == "tokenizer" or isinstance(value, os.PathLike):
            value = str(Path(value).expanduser().resolve())
        if isinstance(value, (str, int, float, bool)):
            out[key] = value
    return out


def recorded_options_for(info: dict, name: str | Path, runtime: str = "auto") -> dict:
    """The loader options an index's info() recorded with its model, when ``name`` is that model (else none).
    None for the ONNX runtime: an export bakes its options in (its model key says which), and its loader takes only
    runtime settings. A recorded tokenizer folder that is gone is dropped (the loader then looks beside the model)."""
    import logging

    name, recorded = str(name), info.get("model_name")
    same = name == recorded or (os.path.exists(name) and os.path.realpath(name) == recorded)
    if not same or settled_runtime(runtime, name) == "onnx":
        return {}
    options = dict(info.get("model_options") or {})
    tokenizer = options.get("tokenizer")
    if isinstance(tokenizer, str) and not os.path.isdir(tokenizer):
        logging.getLogger(__name__).warning("the index's model was loaded with tokenizer=%s, which is gone; loading "
                                            "%s with the tokenizer beside it", tokenizer, name)
        del options["tokenizer"]
    return options


def load(name_or_path: str | Path = "lite", runtime: str = "auto", precision: str = "fp32", **kwargs):
    """Return a ready model. A registered name (see available_models()) or a local checkpoint path: a folder
    written by `polymodal train`, a Hugging Face CLIP folder, or an OpenAI/open_clip-layout CLIP state dict.
    Nothing is downloaded.

    What comes back depends on the model's kind: an embedding model (lite, default, CLIP, `train contrastive`
    folders) has ``encode_image(images)`` / ``encode_text(texts)`` -> float32 numpy ``[N, dim]`` with unit rows and
    ``classify(images, labels)`` -> per image ``[(label, score), ...]`` best first; a VQA model (easy-vqa, coco-yesno,
    `train vqa` folders) has ``answer(image, question)`` -> ``{"answer", "score", "alternatives"}`` and
    ``predict(images, questions)`` -> ``[(answer, probability), ...]``; a captioner has ``caption(images)`` ->
    ``[str, ...]``, one per image.

    ``runtime="onnx"`` serves an export (`polymodal export onnx`) through onnxruntime without importing torch:
    pass the export folder, or a built-in name exported to its default folder (onnx_export_dir(name)). The default,
    ``"auto"``, loads an export folder with onnx and everything else (built-in names too) with torch.

    ``precision="bf16"`` (PyTorch runtime, models with the EfficientNet-Lite0 image tower): image inference runs a
    frozen bf16 graph, faster on CPUs with bf16 instructions (1.1-1.2x the folded fp32 tower here); embeddings match
    fp32 to mean cosine ~0.99 (benchmarks/embed_throughput.py --precision fp32,bf16 measures speed and retrieval recall side by side).

    Keyword options go to the model's loader (lite: top_k; CLIP checkpoints: tokenizer, ...; ONNX: threads); an
    option that loader does not take is refused with the list of those it does."""
    key = str(name_or_path)
    if runtime not in RUNTIMES:
        raise PolymodalError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if key in MODELS and os.path.isdir(key):
        _warn_of_shadowed_folder(key)
    from polymodal.export.runtime import is_onnx_folder, load_onnx

    runtime = settled_runtime(runtime, key)
    if runtime == "onnx":
        if precision != "fp32":
            raise PolymodalError("precision applies to the PyTorch runtime; an ONNX export's variants are chosen "
                                 "and gated by `polymodal export onnx`")
        folder = onnx_export_dir(key) if key in MODELS else Path(key).expanduser()  # a name is the name (as in torch)
        if not is_onnx_folder(folder):
            if key in NO_ONNX:
                raise PolymodalError(f"{key} has no ONNX form ({NO_ONNX[key]}); run it with --runtime torch")
            from polymodal.models.folders import folder_type

            if key in MODELS:
                from polymodal.resources import HERE

                checked_on = " --val-qa FILE.jsonl" if folder_type(HERE / "models" / key) == "fusion_encoder" else ""
                raise PolymodalError(f"no ONNX export of {key!r} (looked in {folder}); create it with "
                                     f"`polymodal export onnx {key}{checked_on}` or pass an export folder")

            if folder_type(folder):  # a saved model (RUN/model): its export is made from it
                raise PolymodalError(f"{key} is a saved model, not its ONNX export; export it with `polymodal export "
                                     f"onnx {key} --out DIR`, then pass --model DIR with --runtime onnx")
            what = "does not exist" if not folder.exists() else "is not an ONNX export (no onnx_config.json)"
            raise PolymodalError(f"{key} {what}; pass a folder written by `polymodal export onnx MODEL --out DIR`, "
                                 f"or a built-in name ({', '.join(sorted(MODELS))}) exported to its default folder")
        if key in MODELS:
            _check_builtin_export(key, folder)
        else:
            _warn_of_older_builtin_export(folder)
        from polymodal.export.runtime import OnnxEmbeddingModel  # the VQA runtime takes the same options

        _check_options(kwargs, _options(OnnxEmbeddingModel, skip=1), f"the ONNX export {folder}")
        model = load_onnx(folder, **kwargs)
        if key not in MODELS:  # an index built with it records where to load it from again (as below)
            model.source = str(folder.resolve())
        model.load_options = _recorded_options(kwargs)
        return model
    if key not in MODELS and is_onnx_folder(Path(key).expanduser()):
        raise PolymodalError(f"{key} is an ONNX export, which runs with runtime='onnx' (the default, 'auto', picks it; "
                             "CLI: --runtime onnx or no --runtime)")
    model = _load_torch(key, **kwargs)
    if key not in MODELS:  # a folder or file: an index built with it records where to load it from again
        model.source = str(Path(key).expanduser().resolve())
    model.load_options = _recorded_options(kwargs)
    if precision != "fp32":
        set_image_precision(model, key, precision)
    return model


def _check_builtin_export(name: str, folder: Path) -> None:
    """A built-in's export in the cache made before an upgrade that re-shipped the built-in (`default` was retrained)
    holds the old weights: refused, instead of served as today's model (its vectors then also refused the indexes
    built with it, with advice to index again)."""
    if why := stale_builtin_export(name, folder):
        raise PolymodalError(why)


def _warn_of_older_builtin_export(folder: Path) -> None:
    """An export loaded by its path (`export onnx default --out DIR`) of a built-in since re-shipped serves the older
    weights under the built-in's name, as the cached one did before it was refused. Warned, not refused: a path names
    that folder, whose weights and version agree (an index built with it stays consistent with it)."""
    from polymodal.export.runtime import read_export_config

    try:
        name = read_export_config(folder).get("name")
    except PolymodalError:
        return  # loading it says what is wrong
    if name in MODELS and (why := stale_builtin_export(name, folder, by_path=True)):
        import logging

        logging.getLogger(__name__).warning("%s", why)


def shipped_version(name: str) -> str | None:
    """The version of built-in ``name`` as this polymodal ships it (its folder's config.json), without loading it;
    None where it ships no folder (lite: its version changes only with the code) or the install is broken (the
    loader reports that)."""
    import json

    from polymodal.resources import HERE

    try:
        return json.loads((HERE / "models" / name / "config.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def stale_index(info: dict) -> str | None:
    """Why an index (ImageIndex.info()) built with a built-in cannot be searched with today's (an upgrade re-shipped
    it: `default` was retrained), or None. `polymodal info --db` showed such an index as if nothing were wrong."""
    name, made = info.get("model_name"), info.get("model_version")
    shipped = shipped_version(name) if name in MODELS else None
    if shipped is None or made in (None, shipped):
        return None
    return (f"built with an older {name} (version {made}; this polymodal's is {shipped}): searches refuse it; "
            f"index its photos again into a new --db")


def stale_builtin_export(name: str, folder: Path, by_path: bool = False) -> str | None:
    """Why the export of built-in ``name`` in ``folder`` is not today's ``name`` (made from an older one), or None.
    lite ships no folder; its version changes only with the code. ``by_path``: the folder was given as a path (it is
    served, as that older model)."""
    from polymodal.export.runtime import read_export_config
    from polymodal.models.folders import folder_type
    from polymodal.resources import HERE

    if (shipped := shipped_version(name)) is None:
        return None  # no shipped folder (lite), or a broken install the torch loader reports
    try:
        made = read_export_config(folder).get("version")
    except PolymodalError:  # a damaged config: loading it says so; `info` lists it as it is
        return None
    if shipped is None or made == shipped:
        return None
    checked_on = " --val-qa FILE.jsonl" if folder_type(HERE / "models" / name) == "fusion_encoder" else ""
    if by_path:
        return (f"{folder} is an ONNX export of an older {name} (version {made}; this polymodal's is {shipped}): it "
                f"serves that older model; for today's, export it again with `polymodal export onnx {name}"
                f"{checked_on} --out {folder}`")
    return (f"the ONNX export of {name!r} in {folder} was made from an older {name} (version {made}; this "
            f"polymodal's is {shipped}); export it again with `polymodal export onnx {name}{checked_on}`")


def _warn_of_shadowed_folder(name: str) -> None:
    """A folder in the working directory called like a built-in (a model saved as ./default, an export written to
    ./lite) is not what the name loads: say so, with the path that loads it."""
    import logging

    from polymodal.resources import HERE

    if os.path.realpath(name) == os.path.realpath(HERE / "models" / name):
        return
    from polymodal.export.runtime import is_onnx_folder

    folder = Path(name)
    # only a folder that holds a model (saved, Hugging Face, exported) or a run's: any other folder of that name
    # (notes, data, an index) is no model the user could have meant, and ./NAME would not load
    if (folder / "config.json").is_file() or is_onnx_folder(folder):
        meant = f"./{name}"
    elif (folder / "model" / "config.json").is_file():
        meant = f"./{name}/model"  # a training run folder: its model
    else:
        return
    logging.getLogger(__name__).warning("%r is the built-in model, not the folder ./%s here; pass %s to load that "
                                        "folder's model", name, name, meant)


def set_image_precision(model, key: str, precision: str) -> None:
    """Runs the model's EfficientNet-Lite0 tower in ``precision``; one error for a model without that tower."""
    from polymodal.encoders.efficientnet import EfficientNetLite0

    tower = getattr(model, "image_tower", None)
    if not isinstance(tower, EfficientNetLite0):
        # (coco-yesno has the tower, inside a base model it loads later: "has none" was untrue)
        raise PolymodalError(f"precision {precision!r} runs on lite, default and trained dual or fusion encoders, "
                             f"whose EfficientNet-Lite0 image tower it switches; {key} offers no such switch: use "
                             "precision fp32")
    tower.set_precision(precision)


# the "type" each polymodal model folder's config.json names -> what an error calls such a folder, and the module and
# function that load it (imported only when such a folder loads)
_FOLDER_LOADERS = {
    "dual_encoder": ("dual-encoder folder", "polymodal.models.dual_encoder", "load_dual_encoder"),
    "fusion_encoder": ("fusion-encoder folder", "polymodal.models.fusion_encoder", "load_fusion_encoder"),
    "captioner": ("captioner folder", "polymodal.models.captioner", "load_captioner"),
    "yesno": ("yes/no model folder", "polymodal.models.yesno", "load_yesno"),
}
FOLDER_TYPES = tuple(_FOLDER_LOADERS)  # a tuple: a "type" that is a list or an object is unknown, not a TypeError


def _load_torch(key: str, **kwargs):
    if key in MODELS:
        return MODELS[key](**kwargs)
    path = Path(key).expanduser()
    if path.exists():
        from polymodal.models.folders import folder_type

        kind = folder_type(path) if path.is_dir() else None
        if kind in FOLDER_TYPES:
            what, module, loader = _FOLDER_LOADERS[kind]
            _check_options(kwargs, [], f"the {what} {path}")
            return getattr(importlib.import_module(module), loader)(path)
        if hint := wrong_folder_hint(path):
            raise PolymodalError(hint)
        # imported here, not above: it brings transformers (~2 s), which trained models' folders never need
        from polymodal.models.clip import load_clip, load_hf_clip, load_openai_clip

        hf = path.is_dir() and (path / "config.json").is_file()  # load_clip's own dispatch
        _check_options(kwargs, _options(load_hf_clip if hf else load_openai_clip, skip=1), f"the CLIP checkpoint {path}")
        return load_clip(path, **kwargs)
    raise unknown_model(key)


def wrong_folder_hint(path: str | Path) -> str:
    """What to pass instead of a `polymodal train` run folder (its model is RUN/model; RUN/checkpoint.pt would
    otherwise be read as a CLIP checkpoint) or an index folder (built with a model it names). "" for other paths."""
    folder = Path(path).expanduser()
    if folder.is_file() and folder.name == "checkpoint.pt" and (folder.parent / "model" / "config.json").is_file():
        return (f"{path} is a training run's checkpoint (for --resume); the run's model is "
                f"{folder.parent / 'model'}: pass that")
    if folder.is_file() and folder.suffix == ".onnx":
        from polymodal.export.runtime import is_onnx_folder

        if is_onnx_folder(folder.parent):
            return f"{path} is one graph of an ONNX export; pass the export folder {folder.parent}"
    if (folder / "model" / "config.json").is_file() and (folder / "checkpoint.pt").is_file():
        return f"{path} is a training run folder; its model is {folder / 'model'}: pass that"
    if folder.is_dir() and not (folder / "config.json").exists() and _holds_polymodal_weights(folder):
        return (f"{path} holds a polymodal model's weights but no config.json: the folder is incomplete (copied in "
                "part?); copy the whole model folder again, or save the model again")
    if folder.is_dir() and (folder / "config.json").is_file():
        if hint := _unloadable_config_hint(folder, path):
            return hint
    if folder.is_file() and folder.name in ("config.json", "model.safetensors") and \
            (_folder_type_known(folder.parent) or _holds_polymodal_weights(folder.parent)):
        # RUN/model/model.safetensors: a polymodal folder's file, not a CLIP state dict to read
        return f"{path} is one file of the model folder {folder.parent}; pass that folder"
    if (folder / "meta.sqlite").is_file():
        from polymodal.index import ImageIndex

        try:
            built_with = f"; it was built with {ImageIndex(folder).info()['model_name']}: pass that"
        except PolymodalError:
            built_with = ""
        return f"{path} is an index (polymodal index --db), not a model{built_with}"
    return ""


def _folder_type_known(folder: Path) -> bool:
    from polymodal.models.folders import folder_type

    return folder_type(folder) in FOLDER_TYPES


def _unloadable_config_hint(folder: Path, path) -> str:
    """A polymodal model folder whose config.json names a type this polymodal does not load (a newer one saved it),
    or that cannot be read (cut short, edited), is said as such: it would otherwise be read as a Hugging Face CLIP
    folder and refused for its model_type. "" for other folders (a CLIP folder, a known type)."""
    import json

    from polymodal import __version__

    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raw = None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if isinstance(kind, str) and kind not in FOLDER_TYPES and ("version" in raw or _holds_polymodal_weights(folder)):
        return (f"{path} holds a polymodal model of type {kind[:60]!r}, which this polymodal ({__version__}) does not "
                "load (saved by a newer polymodal?); upgrade polymodal to load it")
    if not isinstance(kind, str) and _holds_polymodal_weights(folder):
        return (f"{path} holds a polymodal model's weights but its config.json is damaged (cut short or edited: no "
                "readable \"type\"); copy the whole model folder again, or save the model again")
    return ""


# the first names of the tensors polymodal's own models save (dual encoder, fusion encoder, captioner, yes/no)
POLYMODAL_TENSORS = {"image_head", "text_head", "log_logit_scale", "fusion", "vqa_head", "image_proj", "text_proj",
                     "decoder", "prefix_proj", "coef"}


def _holds_polymodal_weights(folder: Path) -> bool:
    """Whether folder/model.safetensors was written by a polymodal model's save() (read from its header only), so a
    missing config.json is said as such rather than as a CLIP checkpoint without CLIP's tensors."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "np") as f:
            return bool({k.split(".")[0] for k in f.keys()} & POLYMODAL_TENSORS)
    except Exception:  # noqa: BLE001 -- a damaged file: the loader that reads it says so
        return False


def check_model_name(name: str) -> None:
    """Refuse a name that is neither a built-in nor a path, or a folder that holds no model (an empty one, a run
    folder, an index), before other checks and advice ("pass --out"; no model loaded)."""
    if name in MODELS:
        return
    path = Path(name).expanduser()
    if not path.exists():
        raise unknown_model(name)
    if not path.is_dir() or _folder_type_known(path):
        return
    if hint := wrong_folder_hint(path):
        raise PolymodalError(hint)
    from polymodal.export.runtime import is_onnx_folder
    from polymodal.models.folders import WEIGHT_SUFFIXES

    if not (path / "config.json").is_file() and not is_onnx_folder(path) and \
            not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()):
        raise PolymodalError(f"{name} holds no model (no config.json, no checkpoint file); pass a model folder (such "
                             "as RUN/model of `polymodal train`), a CLIP checkpoint or a built-in name "
                             f"({', '.join(available_models())})")


def unknown_model(name: str) -> PolymodalError:
    return PolymodalError(
        f"unknown model {name!r}{_did_you_mean(name)}: not a built-in name ({', '.join(available_models())}) and no "
        "such path; pass one of those names or a local checkpoint folder/file"
    )


def _did_you_mean(name: str) -> str:
    """' (did you mean 'easy-vqa'?)' for a near miss of a built-in name (easy_vqa, Lite, defualt), else ""."""
    import difflib

    plain = str(name).strip().lower().replace("_", "-")
    if any(c in plain for c in "/\\.~"):  # a path that is not there: no name was meant
        return ""
    close = [n for n in MODELS if n == plain] or difflib.get_close_matches(plain, list(MODELS), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
