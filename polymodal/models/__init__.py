"""Assembled models. Each exposes encode_image / encode_text / classify (see base.EmbeddingModel)."""
