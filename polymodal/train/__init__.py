"""Training: GradCache for large contrastive batches, torch.distributed helpers."""
