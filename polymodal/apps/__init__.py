"""Applications built on the models: zero-shot classification, retrieval."""
