"""DualEncoder: CLIP-style model over the pretrained towers with trainable projection heads.

Only what was trained is saved (heads, temperature, and any unfrozen tower blocks); the frozen towers come from
the installed weight packages, so a saved model is a few MB.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from polymodal.models.folders import (WEIGHTS_FILE, config_from_dict, folder_type, folder_version, read_folder_config,
                                      read_weights, settings_from, write_model_folder)
from polymodal.encoders.efficientnet import LITE0_TRANSFORM, EfficientNetLite0
from polymodal.encoders.text import SentenceEncoder, minilm_path
from polymodal.errors import PolymodalError
from polymodal.models.base import EmbeddingModel
from polymodal.models.heads import build_head
from polymodal.models.summary import image_tower, summary, tuned

N_IMAGE_BLOCKS = 16
IMAGE_DIM = 1280


@dataclass
class DualEncoderConfig:
    name: str = "dual-encoder"
    embed_dim: int = 256
    image_features: str = "pooled"  # "pooled" [B,1280] or "spatial" [B,49,1280] tokens
    image_head: str = "linear"  # linear | mlp | attention (attention needs spatial)
    text_head: str = "linear"
    head_dropout: float = 0.1  # dropout inside "mlp" heads (strong dropout helps on small data)
    image_trainable_blocks: int = 0  # last N of the 16 MBConv blocks (max N for progressive unfreezing)
    text_trainable_layers: int = 0  # last N of the 6 transformer layers
    logit_scale_init: float = 1 / 0.07

    @property
    def starts_as_lite(self) -> bool:
        """Heads that start as the identity over lite's space (the ConSE image embedding, the text tower's): before
        training, the model embeds exactly as `lite` does (cosine 1.0 on sample photos and texts)."""
        return self.image_head == "conse_residual" and self.text_head == "residual"

    @classmethod
    def from_dict(cls, d: dict) -> "DualEncoderConfig":
        return config_from_dict(cls, d, "dual-encoder")

    def validate(self) -> None:
        if not self.embed_dim >= 1:
            raise PolymodalError(f"embed_dim must be at least 1, got {self.embed_dim!r}")
        if not 0 <= self.head_dropout < 1:  # also refuses nan
            raise PolymodalError(f"head_dropout must be in [0, 1), got {self.head_dropout!r}")
        if not 0 < self.logit_scale_init < float("inf"):
            raise PolymodalError(f"logit_scale_init must be a finite number above 0, got {self.logit_scale_init!r}")
        if self.text_head == "attention":
            raise PolymodalError("the attention head pools spatial image tokens; the text head gets one pooled "
                                 "sentence vector: choose linear, mlp or residual")
        if self.image_features not in ("pooled", "spatial"):
            raise PolymodalError(f"image_features must be 'pooled' or 'spatial', got {self.image_features!r}")
        if self.image_head == "attention" and self.image_features != "spatial":
            raise PolymodalError("the attention head pools spatial tokens; set image_features: spatial")
        if not 0 <= self.image_trainable_blocks <= N_IMAGE_BLOCKS:
            raise PolymodalError(f"image_trainable_blocks must be 0..{N_IMAGE_BLOCKS}")
        if self.image_head == "conse_residual" and (self.image_features != "pooled" or self.embed_dim != 384):
            raise PolymodalError("the conse_residual head lives in the text tower's space: pooled features, embed_dim 384")
        if self.text_head == "residual" and self.embed_dim != 384:
            raise PolymodalError("the residual text head keeps the text tower's 384 dimensions: set embed_dim 384")
        if not 0 <= self.text_trainable_layers <= 6:
            raise PolymodalError("text_trainable_layers must be 0..6")
        if self.image_features == "spatial" and self.image_head != "attention":
            raise PolymodalError(f"spatial image features are 49 tokens per image, which only the attention head pools "
                                 f"(not {self.image_head}); set image_head: attention, or image_features: pooled")


class DualEncoder(nn.Module, EmbeddingModel):
    """Two towers (EfficientNet-Lite0, MiniLM) with trained heads into one space: the built-in ``default`` and what
    `polymodal train contrastive` writes. ``encode_image`` / ``encode_text`` -> float32 numpy ``[N, embed_dim]``,
    rows L2-normalised; ``classify`` -> ``[[(label, score), ...]]`` best first."""

    transform = LITE0_TRANSFORM

    def __init__(self, config: DualEncoderConfig | None = None, version: str = "untrained") -> None:
        nn.Module.__init__(self)
        EmbeddingModel.__init__(self)
        self.config = config or DualEncoderConfig()
        self.config.validate()
        self.name, self.version, self.dim = self.config.name, version, self.config.embed_dim
        self.image_tower = EfficientNetLite0()
        self.text_tower = SentenceEncoder(minilm_path())
        self.image_head = build_head(self.config.image_head, IMAGE_DIM, self.dim, self.config.head_dropout)
        self.text_head = build_head(self.config.text_head, self.text_tower.dim, self.dim, self.config.head_dropout)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(self.config.logit_scale_init)))
        if self.config.image_head == "conse_residual":
            # ConSE base (see models/conse.py): image embedding = ConSE(ImageNet logits) + learned correction
            from polymodal.models.conse import class_prompt_matrix

            self.register_buffer("class_matrix", torch.from_numpy(class_prompt_matrix(self.text_tower)))
        # Frozen towers run in eval mode (BatchNorm statistics fixed); cached features stay valid.
        self.image_tower.requires_grad_(False)
        self.text_tower.requires_grad_(False)
        self.set_trainable(self.config.image_trainable_blocks, self.config.text_trainable_layers)

    # -- what is trained ---------------------------------------------------------
    @property
    def image_cut(self) -> int:
        """Blocks before this index never train, so their output is what the feature cache stores."""
        return N_IMAGE_BLOCKS - self.config.image_trainable_blocks

    def set_trainable(self, image_blocks: int, text_layers: int) -> None:
        """Unfreeze the last `image_blocks` MBConv blocks (+ head conv) and last `text_layers` text layers."""
        tower = self.image_tower
        for i, block in enumerate(tower.blocks):
            block.requires_grad_(i >= N_IMAGE_BLOCKS - image_blocks)
        tower.net._conv_head.requires_grad_(image_blocks > 0)
        tower.net._bn1.requires_grad_(image_blocks > 0)
        for i, layer in enumerate(self.text_tower.model.encoder.layer):
            layer.requires_grad_(i >= len(self.text_tower.model.encoder.layer) - text_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        # Towers stay in eval mode even with unfrozen layers: BatchNorm statistics stay fixed, and BERT's dropout
        # measured worse for text fine-tuning: benchmarks/hard_negatives.py --text-layers 2 --tower-lr-scale 0.01 gave
        # held-out rsum 2.917 / 2.864 (no / swap negatives) with the text tower in train mode, 2.998 / 2.963 without.
        self.image_tower.eval()
        self.text_tower.eval()
        return self

    @property
    def logit_scale_tensor(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(100.0)).exp()  # CLIP's clamp at 100

    def __repr__(self) -> str:  # what it is, not nn.Module's layer tree (models/summary.py)
        c = self.config
        return summary(self, f"dim={self.dim}", [
            ("image", f"{image_tower(self)} -> {c.image_head} head{tuned(c.image_trainable_blocks, 'block')}"),
            ("text", f"MiniLM-L6 -> {c.text_head} head{tuned(c.text_trainable_layers, 'layer')}")])

    @property
    def logit_scale(self) -> float:  # EmbeddingModel uses a float for zero-shot softmax
        return float(self.logit_scale_tensor.detach())

    @property
    def image_cache_signature(self) -> str:
        """Changes whenever what image_cache_input computes changes (tower weights, cut, feature kind, transform)."""
        return f"lite0|cut{self.image_cut}|{self.config.image_features}|{self.transform.to_dict()}"

    @property
    def text_cache_signature(self) -> str:
        return "all-MiniLM-L6-v2|mean"

    # -- image path: pixels -> cache input -> features -> head ----------------------
    def image_cache_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores per image: tower features if the tower is frozen, else the trunk output."""
        if self.image_cut == N_IMAGE_BLOCKS:
            return self._features(self.image_tower.spatial(pixels))
        return self.image_tower.trunk(pixels, self.image_cut)

    def image_from_cache(self, x: torch.Tensor) -> torch.Tensor:
        """Cached tensor -> unnormalised embedding [B, D] (gradients flow into heads and unfrozen blocks)."""
        feats = x if self.image_cut == N_IMAGE_BLOCKS else self._features(self.image_tower.rest(x, self.image_cut))
        out = self.image_head(feats.float())
        if self.config.image_head == "conse_residual":
            from polymodal.models.conse import conse_embedding

            out = out + conse_embedding(self.image_tower.net._fc(feats.float()), self.class_matrix)
        return out

    def _features(self, spatial: torch.Tensor) -> torch.Tensor:
        if self.config.image_features == "pooled":
            return spatial.mean(dim=(2, 3))
        return spatial.flatten(2).transpose(1, 2)  # [B, 49, 1280]

    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_from_cache(self.image_cache_input(pixels))

    # -- text path ------------------------------------------------------------------
    @property
    def text_frozen(self) -> bool:
        return self.config.text_trainable_layers == 0

    def text_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text_head(pooled.float())

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.text_head(self.text_tower(texts))

    # what polymodal.export turns into the text graph
    def text_from_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_head(self.text_tower.pool(input_ids, attention_mask))

    @property
    def text_tokenizer(self):
        return self.text_tower.tokenizer, self.text_tower.max_length

    # -- saving and loading ------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """Heads, temperature and the unfrozen tower parts (parameters and BatchNorm buffers)."""
        keep = ("image_head.", "text_head.", "log_logit_scale", "class_matrix")
        n = self.config.image_trainable_blocks
        if n:
            keep += tuple(f"image_tower.net._blocks.{i}." for i in range(N_IMAGE_BLOCKS - n, N_IMAGE_BLOCKS))
            keep += ("image_tower.net._conv_head.", "image_tower.net._bn1.")
        layers = len(self.text_tower.model.encoder.layer)
        keep += tuple(f"text_tower.model.encoder.layer.{i}." for i in range(layers - self.config.text_trainable_layers, layers))
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if k.startswith(keep)}

    def save(self, folder: str | Path) -> Path:
        """Write config.json + model.safetensors atomically; returns the folder."""
        return save_trained(self, folder, "dual_encoder")


def is_dual_encoder_folder(path: Path) -> bool:
    return folder_type(path) == "dual_encoder"


def load_dual_encoder(folder: str | Path) -> DualEncoder:
    folder = Path(folder)
    raw = read_folder_config(folder, "`polymodal train`")
    model = DualEncoder(settings_from(folder, raw, DualEncoderConfig))
    return load_trained_weights(model, folder, raw)


def save_trained(model, folder: str | Path, kind: str) -> Path:
    """save() of every model saved this way (dual and fusion encoders, captioners): model.safetensors (state_to_save)
    and config.json ({"type": kind, "version": the weights' hash, the config's fields, "transform"}), atomically;
    the model takes the new version. Returns the folder."""
    from safetensors.torch import save as save_bytes

    data = save_bytes(state_to_save(model))
    model.version = hashlib.sha256(data).hexdigest()[:12]
    config = {"type": kind, "version": model.version, **asdict(model.config), "transform": model.transform.to_dict()}
    return write_model_folder(Path(folder), data, config, getattr(model, "loaded_from", None))


def state_to_save(model) -> dict:
    """model.trained_state(), each tensor in the dtype its folder held it in where it converts back exactly: a
    built-in's fp16 weights, untouched, are saved as fp16 again, so the copy has the same bytes and version (indexes
    built with the original accept it); a tensor training changed past what fp16 holds is saved as it is."""
    import torch

    loaded = getattr(model, "loaded_dtypes", {})
    out = {}
    for key, tensor in model.trained_state().items():
        dtype = loaded.get(key)
        if dtype is not None and dtype != tensor.dtype:
            narrow = tensor.to(dtype)
            if torch.equal(narrow.to(tensor.dtype), tensor):
                tensor = narrow
        out[key] = tensor
    return out


def load_trained_weights(model, folder: Path, raw: dict):
    """Load folder/model.safetensors into a model built from its config (``raw``, as read); the keys must be exactly
    what model.trained_state() saves. Shared by every model saved this way (dual and fusion encoders, captioners).
    The model's version is its weights' hash, which must be the one config.json records (folder_version)."""
    from safetensors.torch import load_file

    state = read_weights(folder, load_file)
    expected = model.trained_state()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise PolymodalError(
            f"{folder / WEIGHTS_FILE} does not match its config: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    shapes = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if shapes:  # e.g. a config.json edited after training (another lora_rank or dim)
        k = shapes[0]
        raise PolymodalError(f"{folder / WEIGHTS_FILE} does not match its config: {k} is "
                             f"{list(state[k].shape)} in the weights, {list(expected[k].shape)} by config.json "
                             f"({len(shapes)} such); the folder is damaged or its config was edited")
    model.load_state_dict(state, strict=False)
    model.loaded_dtypes = {k: v.dtype for k, v in state.items()}  # save() keeps them where nothing changed
    model.version = folder_version(folder, raw)  # after the checks above: they say more about a damaged file
    model.loaded_from = folder  # its save() carries the folder's training photos
    return model.eval()
