"""Metrics: retrieval Recall@K and median rank."""
