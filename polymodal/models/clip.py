"""Real CLIP checkpoints from local files: a Hugging Face CLIP folder or an OpenAI/open_clip-layout state dict.

    load_clip("~/models/clip-vit-base-patch32")            # HF folder (config.json, model.safetensors, tokenizer)
    load_clip("ViT-B-32.pt", tokenizer="~/models/clip-tok")  # OpenAI layout; tokenizer files from a folder

Nothing is downloaded: every from_pretrained call uses local_files_only=True.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from polymodal.data.images import ImageTransform
from polymodal.models.folders import WEIGHT_SUFFIXES
from polymodal.data.tokenizer import overflowed, warn_once_if_cut
from polymodal.errors import PolymodalError
from polymodal.models.base import EmbeddingModel
from polymodal.models.clip_keys import is_openai_layout, state_dict_keys, state_dict_of
from polymodal.models.openai_convert import (OPEN_CLIP_VISION_HEADS, check_activation, default_arch, openai_to_hf,
                                             widths)

log = logging.getLogger(__name__)

OPENAI_CLIP_TRANSFORM = ImageTransform(
    resize=224,
    crop=224,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
    resample="bicubic",
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
EXPECTED = (
    "expected a Hugging Face CLIP folder (config.json + model.safetensors + tokenizer files) or an "
    "OpenAI-layout state dict (.pt/.safetensors with visual.conv1.weight ...)"
)
# PIL enum values used by HF processors
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
OPEN_CLIP_CONFIG = "open_clip_config.json"  # what open_clip (and its hub repos) keep beside the weights
OPEN_CLIP_TEXT_HEADS = 8  # open_clip's CLIPTextCfg.heads default
_warned_wide_vit: set[Path] = set()  # files whose wide-ViT guess was logged in this process
_WIDE_VIT = {1280: "H", 1408: "g", 1664: "bigG"}


class ClipModel(EmbeddingModel):
    """A transformers CLIPModel + tokenizer behind the EmbeddingModel interface."""

    def __init__(self, model, tokenizer, *, name: str, version: str, transform: ImageTransform = OPENAI_CLIP_TRANSFORM):
        super().__init__()
        self.model = model.eval().float()
        self.tokenizer = tokenizer
        self.name = name
        self.version = version
        self.transform = transform
        self.dim = int(model.config.projection_dim)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.logit_scale = float(model.logit_scale.detach().exp())

    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        # truncation keeps <|endoftext|> (the post-processor adds it after truncating), which pooling needs
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        warn_once_if_cut(self, enc["attention_mask"], self.max_length, "CLIP text tower",
                         overflowed(getattr(enc, "encodings", None)))
        return self.text_from_tokens(enc["input_ids"], enc["attention_mask"])

    # what polymodal.export turns into the text graph
    def text_from_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    @property
    def text_tokenizer(self):
        return self.tokenizer, self.max_length

    def check_onnx_export(self) -> None:
        check_transformers_traces_clip()


def check_transformers_traces_clip() -> None:
    """transformers 5.4-5.8 cannot trace CLIP's text mask (an IndexError inside create_causal_mask): one clear
    error before any export work, instead of that traceback. Loading and embedding work on every version allowed."""
    import transformers

    version = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())
    if (5, 4) <= version < (5, 9):
        raise PolymodalError(f"transformers {transformers.__version__} cannot export a CLIP text tower to ONNX "
                             "(5.4-5.8 fail to trace its attention mask); pip install -U 'transformers>=5.9' "
                             "(or <5.4) and export again")


def _features(out) -> torch.Tensor:
    # transformers 4 returns the projected tensor; transformers 5 returns an output object whose pooler_output
    # holds the projected features.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- fingerprints ---------------------------------------------------------------------------------------------------
def fingerprint(files: list[Path], chunk: int = 1 << 20) -> str:
    """Short hash of each file's size, first and last MB: an index built with one checkpoint refuses another."""
    h = hashlib.sha256()
    for f in sorted(files):
        size = f.stat().st_size
        h.update(f"{f.name}:{size};".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(chunk))
            if size > chunk:
                fh.seek(max(chunk, size - chunk))
                h.update(fh.read(chunk))
    return h.hexdigest()[:12]


# -- image transform ------------------------------------------------------------------------------------------------
def _image_processor_config(folder: Path) -> tuple[dict | None, Path]:
    """(the folder's CLIPImageProcessor settings or None, the file they came from). transformers 5 saves them nested
    under "image_processor" in processor_config.json, with no preprocessor_config.json, and reads that first; 4.x
    saves preprocessor_config.json."""
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PolymodalError(f"unreadable {path} ({exc}); fix or delete it") from exc
        if key is not None and isinstance(cfg, dict):
            cfg = cfg.get(key)  # 4.x may write a processor_config.json with other settings only
        if isinstance(cfg, dict):
            return cfg, path
    return None, folder


def transform_from_preprocessor(folder: Path, missing: int = logging.WARNING, *,
                                honour_do_resize: bool = True) -> ImageTransform:
    """ImageTransform from the folder's CLIPImageProcessor settings; OpenAI CLIP's if it has none, logged at level
    `missing` (a warning: the embeddings then differ from CLIPProcessor's if the model was trained otherwise).
    honour_do_resize=False: do_resize false read as a resize to "size", as polymodal did before it honoured it."""
    cfg, path = _image_processor_config(folder)
    d = OPENAI_CLIP_TRANSFORM
    if cfg is None:
        log.log(missing, "%s has no image processor settings (preprocessor_config.json, or \"image_processor\" in "
                "processor_config.json); using OpenAI CLIP's: %s resize and centre crop, mean %s, std %s. If the model "
                "was trained with other settings, save its image processor beside it "
                "(CLIPProcessor.save_pretrained or CLIPImageProcessor.save_pretrained into that folder)",
                folder, d.resample, d.mean, d.std)
        return OPENAI_CLIP_TRANSFORM
    size, crop = cfg.get("size", d.resize), cfg.get("crop_size", d.crop)
    resize = not honour_do_resize or cfg.get("do_resize") is not False
    if isinstance(size, dict):
        if "shortest_edge" not in size and resize:
            log.warning("%s resizes to a fixed %s; approximating with short-side resize + centre crop", path, size)
        size = size.get("shortest_edge") or min(size.get("height", d.resize), size.get("width", d.resize))
    if isinstance(crop, dict):
        crop = min(crop.get("height", d.crop), crop.get("width", d.crop))
    if cfg.get("do_center_crop") is False:
        crop = size
    try:
        mean, std = _normalisation(cfg, d)
        return ImageTransform(resize=int(size) if resize else 0, crop=int(crop), mean=mean, std=std,
                              resample=_resample_name(cfg.get("resample", 3)))
    except (TypeError, ValueError) as exc:
        raise PolymodalError(f"{path}: unusable image processor settings ({exc}); fix or delete it") from None


def _normalisation(cfg: dict, d: ImageTransform) -> tuple[tuple, tuple]:
    """(mean, std) on 0-1 pixels that give CLIPImageProcessor's (pixels x rescale_factor - mean) / std, with its
    do_rescale and do_normalize switches: polymodal scales pixels by 1/255 and then normalises, always."""
    mean = [float(x) for x in cfg.get("image_mean", d.mean)]
    std = [float(x) for x in cfg.get("image_std", d.std)]
    if cfg.get("do_normalize") is False:
        mean, std = [0.0] * 3, [1.0] * 3
    factor = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) is not False else 1.0
    scale = 1.0 if abs(255 * factor - 1) < 1e-9 else 1 / (255 * factor)  # x * factor == (x / 255) / scale
    if not 0 < scale < float("inf") or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"rescale_factor {factor}, image_mean {mean}, image_std {std}")
    return tuple(m * scale for m in mean), tuple(s * scale for s in std)


def _resample_name(resample) -> str:
    if isinstance(resample, int) and not isinstance(resample, bool) and resample in _PIL_RESAMPLE:
        return _PIL_RESAMPLE[resample]
    if isinstance(resample, str) and resample.lower() in _PIL_RESAMPLE.values():
        return resample.lower()
    raise ValueError(f"resample {resample!r} is none of {sorted(_PIL_RESAMPLE)} ({', '.join(_PIL_RESAMPLE.values())})")


# -- tokenizer ------------------------------------------------------------------------------------------------------
def _has_tokenizer(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES)


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer, CLIPTokenizerFast

    folder = Path(folder).expanduser()
    if not folder.is_dir() or not _has_tokenizer(folder):
        raise PolymodalError(
            f"no CLIP tokenizer in {folder}: expected vocab.json + merges.txt or tokenizer.json; "
            "put those files beside the checkpoint (in Python, load_clip(..., tokenizer=FOLDER) also takes them)"
        )
    try:
        if (folder / "tokenizer_config.json").is_file():  # checked below too: a slow tokenizer's save_pretrained
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)  # writes vocab/merges, no tokenizer.json
        else:
            # bare vocab/merges: no class recorded. The fast class: transformers 4's CLIPTokenizer is the slow one,
            # which `export onnx` cannot save as tokenizer.json (transformers 5's CLIPTokenizer is this class)
            tok = CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers and tokenizers raise many types for one bad file
        raise PolymodalError(
            f"cannot load the tokenizer in {folder} ({_first_line(exc)}); pass a folder with CLIP tokenizer files"
        ) from exc
    _check_merges(folder, tok)
    return tok


def _check_merges(folder: Path, tok) -> None:
    """One error for a BPE tokenizer with fewer merges than its vocabulary has merged tokens (each merge makes one):
    a merges.txt cut short at a line break (or empty) loads, and splits words into other tokens than the model was
    trained on: every text embeds wrongly, silently."""
    try:
        model = json.loads(tok.backend_tokenizer.to_str())["model"]
    except (AttributeError, KeyError, TypeError, ValueError):  # not a tokenizers-backed tokenizer: nothing to count
        return
    if model.get("type") != "BPE":
        return
    suffix, added = model.get("end_of_word_suffix") or "", set(tok.get_added_vocab())
    merged = sum(1 for t in model.get("vocab", {}) if t not in added and len(t.removesuffix(suffix) if suffix else t) > 1)
    merges = len(model.get("merges") or [])
    if merges < merged:
        raise PolymodalError(f"the tokenizer in {folder} has {merges} merges for {merged} "
                             "merged tokens in its vocabulary: merges.txt (or tokenizer.json) is cut short; copy the "
                             "tokenizer files again")


# -- Hugging Face folder --------------------------------------------------------------------------------------------
def load_hf_clip(folder: str | Path, tokenizer: str | Path | None = None) -> ClipModel:
    """A Hugging Face CLIP folder: config.json (model_type "clip"), model.safetensors or pytorch_model.bin and
    tokenizer files (or `tokenizer=FOLDER`)."""
    from safetensors import SafetensorError
    from transformers import CLIPModel

    folder = Path(folder).expanduser()
    config = _check_hf_config(folder)
    weights = _hf_weight_files(folder)
    tok = load_tokenizer(tokenizer if tokenizer is not None else folder)
    _check_eos(folder, config.text_config.eos_token_id, tok)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar for a load of a second or two
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its page-long load report: the keys that do not fit are named below instead
    try:
        model, info = CLIPModel.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise PolymodalError(f"cannot load the CLIP weights in {folder} ({exc}); {EXPECTED}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    # weights config.json has no place for (more layers than it says) would be dropped: a shorter model, silently
    extra = [k for k in info.get("unexpected_keys") or [] if not k.endswith("position_ids")]
    bad = list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []]
    if bad or extra:
        raise PolymodalError(f"{folder}: weights do not fit config.json (missing/mismatched: {_few(bad)}; "
                             f"not in its architecture: {_few(extra)}); pass the config.json these weights were "
                             "saved with")
    settings = _image_processor_config(folder)[1]  # the preprocessing shapes the embeddings as much as the weights
    transform = _fitted_transform(folder, model)
    now, was = {"transform": transform.to_dict()}, {"transform": _transform_as_before(folder, model).to_dict()}
    if (arch := _hf_arch(model.config)) != _default_hf_arch(model.config):
        now["arch"] = arch  # config.json values the weights' shapes do not fix: another space for the same weights
    version = fingerprint(list(weights) + ([settings] if settings.is_file() else [])) + _version_suffix(now, was)
    return ClipModel(model, tok, name=folder.resolve().name, version=version, transform=transform)


def _check_eos(folder: Path, eos: int | None, tok) -> None:
    """One error for a config.json whose text eos_token_id is not the tokenizer's end token: CLIPModel pools each
    text at the first token of that id (2: the legacy argmax, at <|endoftext|> too), which the tokenizer never
    writes, so every text was pooled at its first token and all texts embedded alike, silently."""
    if eos != 2 and tok.eos_token_id is not None and eos != tok.eos_token_id:
        raise PolymodalError(f"{folder / 'config.json'}: text_config.eos_token_id is {eos}, but the tokenizer's end "
                             f"token {tok.eos_token} has id {tok.eos_token_id}: CLIP pools each text at its first token "
                             f"{eos}, which the tokenizer does not end texts with (a text without one is pooled at its "
                             f"first token: all embed alike); set \"eos_token_id\": "
                             f"{tok.eos_token_id} in config.json's text_config (or pass the tokenizer the model was "
                             "trained with)")


def _hf_arch(config) -> dict:
    """What config.json says that changes the embeddings but not the weights' shapes (so a load with another value
    succeeds): each tower's activation, head count and LayerNorm epsilon."""
    return {name: [tower.hidden_act, int(tower.num_attention_heads), float(tower.layer_norm_eps)]
            for name, tower in (("vision", config.vision_config), ("text", config.text_config))}


def _default_hf_arch(config) -> dict:
    """_hf_arch of the config.json OpenAI's and LAION's wide-ViT conversions ship (default_arch: QuickGELU and
    width // 64 heads, or open_clip's for its wider ViTs; epsilon 1e-5): such folders keep the version they had
    before config.json counted."""
    act, v_heads, t_heads = default_arch(config.vision_config.hidden_size, config.text_config.hidden_size)
    return {"vision": [act, v_heads, 1e-5], "text": [act, t_heads, 1e-5]}


def _fitted_transform(folder: Path, model, missing: int = logging.WARNING) -> ImageTransform:
    """The folder's preprocessing, cropped to the size the vision tower takes (a 336px model, or a small one, with no
    preprocessor_config.json would otherwise get 224px crops and fail on the first image)."""
    return _fitted(transform_from_preprocessor(folder, missing), model)


def _fitted(transform: ImageTransform, model) -> ImageTransform:
    size = model.config.vision_config.image_size
    if transform.crop != size:
        transform = ImageTransform(size if transform.resize else 0, size, transform.mean, transform.std,
                                   transform.resample)
    return transform


def _check_hf_config(folder: Path):
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise PolymodalError(f"{folder} has no config.json; {EXPECTED}")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise PolymodalError(f"unreadable {cfg_path} ({exc}); {EXPECTED}") from exc
    if model_type != "clip":
        raise PolymodalError(f"{cfg_path} has model_type {model_type!r}, not 'clip'; {EXPECTED}")
    from transformers import CLIPConfig

    try:  # transformers refuses bad values in many error types (its strict dataclasses' among them)
        config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - all are one mistake: a config.json value transformers refuses
        reason = " ".join(line.strip() for line in str(exc).splitlines()).split(" Errors: ")[0]  # one line
        raise PolymodalError(f"{cfg_path} is not a valid CLIP config ({reason[:300]}); fix the value it names"
                             ) from None
    for tower in (config.vision_config, config.text_config):
        check_activation(tower.hidden_act, f"{cfg_path}: ")
    return config


def _hf_weight_files(folder: Path) -> list[Path]:
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded checkpoint: fingerprint every shard
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as exc:
                raise PolymodalError(f"unreadable {index} ({exc})") from exc
            return [folder / s for s in shards]
    raise PolymodalError(f"{folder} has no model.safetensors or pytorch_model.bin; {EXPECTED}")


# -- OpenAI layout --------------------------------------------------------------------------------------------------
def read_state_dict(file: str | Path) -> dict:
    """.safetensors, or a torch file: a plain state dict, {"state_dict": ...} or a TorchScript archive."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise PolymodalError(f"checkpoint not found: {file}; {EXPECTED}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(file))
        except Exception as exc:  # safetensors raises its own error types
            raise PolymodalError(f"not a readable safetensors file: {file} ({exc})") from exc
    else:
        sd = _torch_load(file)
    found = state_dict_of(sd)  # (as serve's check before loading reads it: clip_keys)
    if found is None:
        raise PolymodalError(f"{file} does not hold a state dict; {EXPECTED}")
    return found


def _first_line(exc: Exception) -> str:
    """torch's unpickling errors run to a page of advice about weights_only; say what failed in a few words."""
    if "Weights only load failed" in str(exc):  # torch wraps every unpickling error in this advice
        if "unsupported global" in str(exc).lower():  # a module allowed but not listed, or one blocked (os)
            return "it holds Python objects besides tensors, which are not unpickled for safety"
        return "its bytes are not a torch checkpoint's: a damaged file or another format"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _torch_load(file: Path):
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript archive")  # handled below
            return torch.load(file, map_location="cpu", weights_only=True)
    except RuntimeError as exc:
        if "TorchScript" not in str(exc):
            raise PolymodalError(f"cannot read {file} as a torch checkpoint ({_first_line(exc)}); {EXPECTED}") from exc
    except Exception as exc:  # unpickling errors come in many types
        raise PolymodalError(f"cannot read {file} as a torch checkpoint ({_first_line(exc)}); {EXPECTED}") from exc
    # OpenAI's original .pt files are TorchScript archives: take their weights only.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load is deprecated but is the only reader of these files
            return torch.jit.load(str(file), map_location="cpu").state_dict()
    except Exception as exc:
        raise PolymodalError(f"cannot read TorchScript archive {file} ({exc}); {EXPECTED}") from exc


def build_hf_clip(state_dict: dict, **config_kw):
    """OpenAI-layout weights -> a transformers CLIPModel, loaded strictly."""
    from transformers import CLIPModel

    config, hf_sd = openai_to_hf(state_dict, **config_kw)
    hf_sd = {k: v.float() if v.is_floating_point() else v for k, v in hf_sd.items()}  # OpenAI ships fp16
    try:
        from transformers.initialization import no_init_weights  # skip random init: every weight is overwritten
    except ImportError:  # pragma: no cover - other transformers versions
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = CLIPModel(config)
    result = model.load_state_dict(hf_sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PolymodalError(
            "the OpenAI-layout checkpoint does not match a ViT CLIP: "
            f"missing {_few(result.missing_keys)}; unexpected {_few(result.unexpected_keys)}"
        )
    return model.eval()


def load_openai_clip(
    file: str | Path,
    tokenizer: str | Path | None = None,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str | None = None,
) -> ClipModel:
    """An OpenAI/open_clip-layout ViT CLIP state dict (.pt/.pth/.bin/.safetensors). The file has no tokenizer:
    `tokenizer` is a folder with vocab.json + merges.txt or tokenizer.json (default: the checkpoint's folder).
    The file does not record its head counts or activation either: they come from the open_clip_config.json that
    open_clip keeps beside its weights, else from these options, else OpenAI's (QuickGELU, width // 64) or, for
    open_clip's wider ViTs (H, g, bigG), theirs (see openai_convert.default_arch). hidden_act: "quick_gelu" for
    OpenAI weights; open_clip models trained without QuickGELU need "gelu"."""
    file = Path(file).expanduser()
    sd = read_state_dict(file)
    if not is_openai_layout(sd):
        raise PolymodalError(f"{file} has no visual.conv1.weight (keys start {_few(list(sd))}); {EXPECTED}")
    tok_dir = Path(tokenizer).expanduser() if tokenizer is not None else file.parent
    if tokenizer is None and not _has_tokenizer(tok_dir):
        raise PolymodalError(
            f"{file.name} has no tokenizer and none lies beside it; put CLIP's vocab.json + merges.txt or "
            "tokenizer.json in its folder (in Python, load_clip(..., tokenizer=FOLDER) also takes them)"
        )
    tok = load_tokenizer(tok_dir)
    stated, preprocess = _open_clip_settings(file.parent)
    asked = {"vision_heads": vision_heads, "text_heads": text_heads, "hidden_act": hidden_act}
    options = {**stated, **{k: v for k, v in asked.items() if v is not None}}
    if "hidden_act" not in options and widths(sd)[0] in OPEN_CLIP_VISION_HEADS and file not in _warned_wide_vit:
        _warned_wide_vit.add(file)  # once per file and process: a server or notebook may load it many times
        log.warning("%s: no open_clip_config.json beside it; loading it as open_clip's ViT-%s with GELU, as LAION's "
                    "are. DFN5B and MetaCLIP weights use QuickGELU: put their open_clip_config.json beside the file "
                    '(or one of {"model_cfg": {"quick_gelu": true}})', file, _WIDE_VIT[widths(sd)[0]])
    model = build_hf_clip(sd, **options, eos_token_id=tok.eos_token_id)
    # an OpenAI-layout file comes with no processor settings and OpenAI's are its format's own: info, not a warning
    if preprocess is not None and _image_processor_config(file.parent)[0] is None:
        transform = _fitted(preprocess, model)
    else:
        transform = _fitted_transform(file.parent, model, logging.INFO)
    version = fingerprint([file]) + _settings_suffix(sd, model, transform, file.parent)
    return ClipModel(model, tok, name=file.stem, version=version, transform=transform)


def _open_clip_settings(folder: Path) -> tuple[dict, ImageTransform | None]:
    """(load options, image transform or None) from the open_clip_config.json in ``folder``, if there is one:
    {"model_cfg": {"quick_gelu", "vision_cfg": {"width", "head_width"}, "text_cfg": {"heads"}}, "preprocess_cfg":
    {"mean", "std", "interpolation", "resize_mode"}}. What it leaves out: open_clip's defaults (GELU, vision heads
    of 64 channels, 8 text heads for a text tower given a width) or, for a tower without a width, the shapes'
    (openai_convert.default_arch)."""
    path = folder / OPEN_CLIP_CONFIG
    if not path.is_file():
        return {}, None
    try:
        cfg = json.loads(path.read_text())
        model_cfg = cfg.get("model_cfg", cfg)  # open_clip's own model configs are the bare model_cfg
        vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
        _check_open_clip_towers(path, vision, text)
        options = {"hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"}
        if "heads" in text:  # (a file naming only what differs, e.g. {"model_cfg": {"quick_gelu": false}}, is fine)
            options["text_heads"] = int(text["heads"])
        elif "width" in text:  # a text tower stated without heads: open_clip's CLIPTextCfg default, not width // 64
            options["text_heads"] = OPEN_CLIP_TEXT_HEADS
        if "width" in vision:
            options["vision_heads"] = int(vision["width"]) // int(vision.get("head_width", 64))
        pre = cfg.get("preprocess_cfg")
        transform = None
        if isinstance(pre, dict):
            if pre.get("resize_mode", "shortest") != "shortest":
                log.warning("%s resizes by %r; approximating with short-side resize + centre crop", path,
                            pre["resize_mode"])
            d = OPENAI_CLIP_TRANSFORM
            interpolation = pre.get("interpolation", "bicubic")
            transform = ImageTransform(d.resize, d.crop, tuple(float(x) for x in pre.get("mean", d.mean)),
                                       tuple(float(x) for x in pre.get("std", d.std)),
                                       _resample_name("bicubic" if interpolation == "random" else interpolation))
    except (OSError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
        raise PolymodalError(f"unusable {path} ({exc}); fix it, or delete it to load with OpenAI's settings") from None
    return options, transform


# open_clip settings that change what a tower computes from the same weights (so the strict load cannot catch them),
# with the values transformers' CLIPModel computes as: CLS-token image pooling, text pooled at <|endoftext|> behind a
# causal mask, exact GELU (or QuickGELU), LayerNorm epsilon 1e-5, learned positions.
_OPEN_CLIP_AS_CLIP = {
    "vision_cfg": {"global_average_pool": (False,), "pool_type": ("tok",), "attentional_pool": (False,),
                   "pos_embed_type": ("learnable",), "act_kwargs": ({},), "norm_kwargs": ({}, {"eps": 1e-5})},
    "text_cfg": {"pool_type": ("argmax", "eos"), "no_causal_mask": (False,), "act_kwargs": ({},),
                 "norm_kwargs": ({}, {"eps": 1e-5})},
}


def _check_open_clip_towers(path: Path, vision: dict, text: dict) -> None:
    """One error for an open_clip_config.json whose towers pool, mask or normalise otherwise than CLIP's: the weights
    load, but would embed unlike open_clip's own model of them."""
    for section, cfg in (("vision_cfg", vision), ("text_cfg", text)):
        for key, plain in _OPEN_CLIP_AS_CLIP[section].items():
            if key in cfg and cfg[key] is not None and cfg[key] not in plain:
                raise PolymodalError(
                    f"{path} sets {section}.{key} = {json.dumps(cfg[key])}, which polymodal's CLIP loader cannot "
                    f"reproduce (it computes ViT CLIP as OpenAI's: {section}.{key} = {json.dumps(plain[0])}); these "
                    "weights would embed unlike open_clip's model of them: use open_clip for this checkpoint")


def _settings_suffix(sd: dict, model, transform: ImageTransform, folder: Path) -> str:
    """'' when the file loads as it always has (OpenAI's activation, width // 64 heads, the preprocessing of the
    folder's processor settings as read before, or OpenAI's), so indexes built with it stay valid; else a digest of
    what differs, so an index built with other settings (another hidden_act, vision_heads, open_clip_config.json)
    refuses this model instead of mixing two."""
    v, t = model.config.vision_config, model.config.text_config
    now = {"hidden_act": v.hidden_act, "vision_heads": v.num_attention_heads, "text_heads": t.num_attention_heads,
           "transform": transform.to_dict()}
    v_width, t_width = widths(sd)
    was = {"hidden_act": "quick_gelu", "vision_heads": max(1, v_width // 64), "text_heads": max(1, t_width // 64),
           "transform": _transform_as_before(folder, model).to_dict()}
    return _version_suffix(now, was)


def _version_suffix(now: dict, was: dict) -> str:
    """'' when a model loads with the settings earlier polymodal versions gave it (its indexes stay valid), else
    '-' and a digest of the settings: a model key of its own."""
    return "" if now == was else "-" + hashlib.sha256(json.dumps(now, sort_keys=True).encode()).hexdigest()[:6]


def _transform_as_before(folder: Path, model) -> ImageTransform:
    """The preprocessing polymodal read from the folder's processor settings before it honoured do_normalize,
    do_rescale and rescale_factor, do_resize, and every resample (1, 4, 5 were read as bicubic)."""
    transform = _fitted(transform_from_preprocessor(folder, logging.DEBUG, honour_do_resize=False), model)
    cfg = _image_processor_config(folder)[0]
    if cfg is None:
        return transform
    resample = cfg.get("resample", 3)
    try:
        d = OPENAI_CLIP_TRANSFORM  # (what a missing mean or std was read as)
        return replace(transform, mean=tuple(float(x) for x in cfg.get("image_mean", d.mean)),
                       std=tuple(float(x) for x in cfg.get("image_std", d.std)),
                       resample={0: "nearest", 2: "bilinear"}.get(resample, "bicubic") if isinstance(resample, int)
                       else str(resample))
    except (TypeError, ValueError):
        return transform


# -- dispatch -------------------------------------------------------------------------------------------------------
def load_clip(path: str | Path, **kw) -> ClipModel:
    """A Hugging Face CLIP folder, an OpenAI-layout checkpoint file, or a folder holding exactly one such file."""
    path = Path(path).expanduser()
    if path.is_file():
        return load_openai_clip(path, **kw)
    if not path.is_dir():
        raise PolymodalError(f"no such file or folder: {path}; {EXPECTED}")
    if (path / "config.json").is_file():
        return load_hf_clip(path, **kw)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) > 1:  # safetensors headers are cheap to read: keep only OpenAI-layout files
        files = [f for f in files if f.suffix != ".safetensors" or _safetensors_is_openai(f)] or files
    if not files:
        raise PolymodalError(f"{path} has neither config.json nor a .pt/.pth/.bin/.safetensors file; {EXPECTED}")
    if len(files) > 1:
        raise PolymodalError(
            f"{path} holds several checkpoints ({', '.join(f.name for f in files)}); pass the file to load"
        )
    return load_openai_clip(files[0], **kw)


def _safetensors_is_openai(file: Path) -> bool:
    return is_openai_layout(state_dict_keys(file))


def _few(items, n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "") if items else "none"
