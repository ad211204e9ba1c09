"""Low-rank adapters (LoRA, Hu et al. 2021) for the plain-torch BERT layers: W x + (alpha / r) B A x.

Written here rather than taken from peft: peft wraps transformers models and brings accelerate along, while the
layers it would adapt are our own plain-torch BERT (`polymodal.encoders.bert`); the adapter itself is a few lines.
B starts at zero, so an adapted layer starts exactly as the pretrained one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError

# the Linear layers of a BERT layer that get adapters (query/key/value, attention output, feed-forward in/out)
BERT_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise PolymodalError(f"LoRA rank must be a positive int, got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
            raise PolymodalError(f"LoRA alpha must be a finite number above 0, got {alpha!r}")  # nan/inf: NaN outputs
        self.base, self.scale = base, alpha / rank
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(layers: nn.ModuleList, rank: int, alpha: float, targets=BERT_TARGETS) -> None:
    """Wrap each target Linear of each layer in a LoRALinear (in place)."""
    for layer in layers:
        for dotted in targets:
            parent_name, _, attr = dotted.rpartition(".")
            parent = layer.get_submodule(parent_name)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha))
