"""A frozen TorchScript graph of a convolutional trunk for inference, in fp32 or bf16.

Why: eager PyTorch runs every BatchNorm and ReLU6 of EfficientNet as its own pass over memory; torch.jit.freeze
folds BatchNorm into the convolutions and lets oneDNN fuse the activations. In bf16, on CPUs with bf16 instructions
(avx512_bf16 or AMX), oneDNN's bf16 kernels also make batches pay off. Measured on the tower alone (2-core EPYC):
batch 8 runs about 1.9x the images/s of batch 1 and about 3x fp32 eager; end to end with preprocessing see
`benchmarks/embed_throughput.py --runtime torch,torch-bf16`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from polymodal.errors import PolymodalError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def bf16_supported() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (otherwise bf16 is emulated and slower than fp32)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise PolymodalError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported():
        raise PolymodalError("this CPU has no bf16 instructions (avx512_bf16 or AMX), so bf16 would be slower "
                             "than fp32; use precision fp32 (the default)")
    return PRECISIONS[precision]


class FrozenTrunk:
    """module(pixels [B,3,H,W]) -> features, as one frozen graph in `precision`; returns float32.

    The graph is traced for one input size (padding is computed from it), so other sizes are refused: callers
    fall back to eager for them (see `accepts`)."""

    def __init__(self, module: nn.Module, precision: str = "bf16", size: tuple[int, int] = (224, 224)) -> None:
        self.dtype = check_precision(precision)
        self.precision = precision
        self.size = tuple(size)
        net = copy.deepcopy(module).eval().to(self.dtype)  # a copy: the eager module stays fp32 and trainable
        example = torch.zeros(2, 3, *self.size, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        # torch.jit is marked deprecated in favour of torch.compile, which needs a C++ compiler at run time and
        # minutes of compiling; trace+freeze works in the pinned torch (tests/test_precision.py) and takes < 1 s.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.graph = torch.jit.freeze(torch.jit.trace(net, example))
            self.graph(example)  # the first runs specialise the graph; pay for them now, not in a request
            self.graph(example)

    def accepts(self, pixels: torch.Tensor) -> bool:
        return tuple(pixels.shape[-2:]) == self.size and not torch.is_grad_enabled()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.dtype).contiguous(memory_format=torch.channels_last)
        return self.graph(x).float()
