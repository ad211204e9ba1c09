"""Training losses: each a pure function plus a thin nn.Module, returning a dataclass."""

from polymodal.losses.contrastive import ClipLoss, ContrastiveOutput, LearnableTemperature, contrastive_loss

__all__ = ["ClipLoss", "ContrastiveOutput", "LearnableTemperature", "contrastive_loss"]
