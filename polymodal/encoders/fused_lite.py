"""An inference copy of EfficientNet-Lite0 with each BatchNorm folded into its convolution.

Why: eager PyTorch runs every BatchNorm as its own pass over memory, and pads every stride-1 convolution's input into
a new tensor first ("same" padding written as ZeroPad2d + conv); together a third of the tower's time on a CPU.
Folding the (frozen, eval-mode) BatchNorm into the conv weights, moving symmetric padding into the conv and
clipping ReLU6 in place gives the same features to ~3e-5 and 1.3-2x the images/s of eager fp32 (2-core AMX Xeon,
benchmarks/fused_tower.py: batch 1 50 -> 67, batch 8 38 -> 69, batch 32 31 -> 61 images/s; `lite` end to end 1.56x).
Training never runs it: the eager module keeps its BatchNorms and gradients.

The five stride-2 layers pad one side only (ZeroPad2d(a, a+1)), which still wrote each one's input into a new,
larger tensor (fill, then copy: ~30 of the ~170 ms a batch of 8 took in a profile without the CLI's heap setting,
as `train` runs, where fresh buffers fault their pages in). Each becomes a kernel one wider whose first row
and column are zero, padded a+1 on both sides inside the conv: the same features (bit for bit on a 2-core EPYC),
1.07-1.11x the tower's images/s with the CLI's heap setting, 1.23-1.31x without (benchmarks/fused_tower_rewrites.py).
Running the 1x1 convs as matrix products instead was tried: 1.02x with one thread, 0.93x with two (oneDNN's 1x1
convs are faster there)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def fused_copy(net: nn.Module, rewrite: bool = True) -> nn.Module:
    """A copy of an efficientnet_lite_pytorch EfficientNet, BatchNorms folded, for inference only.
    ``rewrite=False``: the one-sided pads left as they were (the copy before `_pad_inside`, for benchmarks)."""
    net = copy.deepcopy(net, _shared_tensors(net)).eval().requires_grad_(False)
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
    if rewrite:
        _pad_inside(net._conv_stem)
        for block in net._blocks:
            _pad_inside(block._depthwise_conv)
    return net.to(memory_format=torch.channels_last)


def _shared_tensors(net: nn.Module) -> dict:
    """deepcopy's memo: the copy's modules are new, its tensors the original's (as new parameters that need no
    gradient). Copying them (~19 MB into fresh memory) took ~0.2 s, and folding replaces all of them but the
    classifier's, which extract_features never reads; nothing here writes to a tensor in place."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in net.parameters()}
    return memo | {id(b): b.detach() for b in net.buffers()}


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


def _pad_inside(conv: nn.Conv2d) -> None:
    """ZeroPad2d(a, a+1) on each axis then a stride-2 conv -> the same conv with a kernel one wider, its first row and
    column zero, padded a+1 on both sides: output i reads inputs 2i-a-1 .. 2i-a+k-1, the first against a zero weight,
    so the same sums for any input size, without padding the input into a new tensor first."""
    pad = getattr(conv, "static_padding", None)
    if not isinstance(pad, nn.ZeroPad2d) or tuple(conv.stride) != (2, 2) or tuple(conv.padding) != (0, 0) \
            or tuple(conv.dilation) != (1, 1):
        return
    left, right, top, bottom = pad.padding
    if right != left + 1 or bottom != top + 1:
        return
    weight = conv.weight.new_zeros(*conv.weight.shape[:2], conv.weight.shape[2] + 1, conv.weight.shape[3] + 1)
    weight[:, :, 1:, 1:] = conv.weight
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.kernel_size, conv.padding, conv.static_padding = tuple(weight.shape[2:]), (bottom, right), nn.Identity()


def weights_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (optimizer steps and load_state_dict
    bump a tensor's version), so a copy built from older weights is never used. Tensors made under
    torch.inference_mode() keep no version, and writes through `param.data` bump none: the tower also drops its copy
    after load_state_dict; other `.data` surgery needs `tower._fused = None`."""
    tensors = (*module.parameters(), *module.buffers())
    return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)
