"""Modality towers: each maps a batch to pooled [B, D] features (and token/spatial features where useful)."""
