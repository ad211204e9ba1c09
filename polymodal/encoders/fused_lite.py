"""An inference copy of EfficientNet-Lite0 with each BatchNorm folded into its convolution.

Why: eager PyTorch runs every BatchNorm as its own pass over memory, and pads every stride-1 convolution's input into
a new tensor first ("same" padding written as ZeroPad2d + conv); together a third of the tower's time on a CPU.
Folding the (frozen, eval-mode) BatchNorm into the conv weights, moving symmetric padding into the conv and
clipping ReLU6 in place gives the same features to ~3e-5 and 1.3-2x the images/s of eager fp32 (2-core AMX Xeon,
benchmarks/fused_tower.py: batch 1 50 -> 67, batch 8 38 -> 69, batch 32 31 -> 61 images/s; `lite` end to end 1.56x).
Training never runs it: the eager module keeps its BatchNorms and gradients.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fused_copy(net: nn.Module) -> nn.Module:
    """A deep copy of an efficientnet_lite_pytorch EfficientNet, BatchNorms folded, for inference only."""
    net = copy.deepcopy(net).eval().requires_grad_(False)
    _fold(net._conv_stem, net._bn0)
    _fold(net._conv_head, net._bn1)
    net._bn0, net._bn1 = nn.Identity(), nn.Identity()
    for block in net._blocks:
        if block._block_args.expand_ratio != 1:
            _fold(block._expand_conv, block._bn0)
            block._bn0 = nn.Identity()
        _fold(block._depthwise_conv, block._bn1)
        _fold(block._project_conv, block._bn2)
        block._bn1, block._bn2 = nn.Identity(), nn.Identity()
        block._swish = nn.ReLU6(inplace=True)  # each follows a conv whose output nothing else reads
    net._swish = nn.ReLU6(inplace=True)
    return net.to(memory_format=torch.channels_last)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv then bn (running statistics) -> one conv with a bias; symmetric static padding moved into the conv."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    shift = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight = nn.Parameter(conv.weight * scale[:, None, None, None], requires_grad=False)
    conv.bias = nn.Parameter(shift, requires_grad=False)
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:  # stride-2 layers pad one side only: those keep their ZeroPad2d
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


def weights_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer steps and load_state_dict
    bump a tensor's version), so a copy built from older weights is never used. Tensors made under
    torch.inference_mode() keep no version, and writes through `param.data` bump none: the tower also drops its copy
    after load_state_dict; other `.data` surgery needs `tower._fused = None`."""
    tensors = (*module.parameters(), *module.buffers())
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)
