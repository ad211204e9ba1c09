"""A server left running for days: benchmarks/serve_soak.py (memory and latency sampled under a bounded request mix)
keeps running, and the per-input caches a served request fills stay bounded (stop 52 measured them flat after
warm-up; these keep them so)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from conftest import benchmark_module  # noqa: E402
from test_web_page import _serving  # noqa: E402 - uvicorn on a free loopback port, in a thread


def test_serve_soak_tiny_run(lite, gallery, tmp_path):
    import os

    from polymodal.index import ImageIndex
    from polymodal.serve import create_app

    db = tmp_path / "db"  # uploads go into it: not the shared `db` fixture
    ImageIndex(db).update(gallery, lite, progress=False)
    images = [p.read_bytes() for p in sorted(gallery.glob("*.jpg"))[:4]]
    module = benchmark_module("serve_soak")
    lines: list[str] = []
    with _serving(create_app(lite, db)) as base:
        summary = module.soak(base, os.getpid(), images, requests=60, clients=2, window=20, seconds=120,
                              out=lines.append)
    rows = [json.loads(line) for line in lines]
    assert len(ImageIndex(db)) == len(list(gallery.glob("*.jpg")))  # its uploads were all removed again
    assert summary["failure"] is None, summary  # no 5xx, no bad request answered other than 4xx
    assert [r["requests"] for r in rows[:-1]] == [20, 40, 60] and rows[-1] == summary
    assert all(r["rss_mb"] > 0 and r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in rows[:-1])
    assert summary["rss"] > 0 and summary["p50"] > 0 and summary["windows"] == 3


def test_label_prompt_cache_stays_bounded_under_distinct_labels(lite):
    """A served /v1/classify with labels never seen before (each client its own) caches their prompt matrix: at most
    32 are kept, however many label sets come."""
    from polymodal.apps.zeroshot import PromptCache

    cache = PromptCache(lite)
    for i in range(40):
        cache.get([f"label {i}", f"other {i}"], ["a photo of a {}."])
    assert len(cache._items) == 32 and cache.misses == 40
