"""Prometheus text-format metrics, written by hand (no dependency): requests, latency, batch sizes."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(**kv) -> str:
    def esc(v) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


class _Histogram:
    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: dict) -> list[str]:
        out = [f"{name}_bucket{_labels(**labels, le=_num(b))} {c}" for b, c in zip(self.buckets, self.counts)]
        out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {self.total}")
        out.append(f"{name}_sum{_labels(**labels)} {_num(float(self.sum))}")
        out.append(f"{name}_count{_labels(**labels)} {self.total}")
        return out


class Metrics:
    """Thread-safe counters and histograms, rendered in the Prometheus text exposition format (0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (endpoint, method, status) -> n
        self.latency: dict[str, _Histogram] = {}
        self.batch_items: dict[str, _Histogram] = {}
        self.batch_requests: dict[str, _Histogram] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}  # name -> (help, read())

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, method, status)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, kind: str, items: int, requests: int) -> None:
        with self._lock:
            self.batch_items.setdefault(kind, _Histogram(BATCH_BUCKETS)).observe(items)
            self.batch_requests.setdefault(kind, _Histogram(BATCH_BUCKETS)).observe(requests)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP polymodal_requests_total HTTP requests by endpoint (route template), method and status.",
                "# TYPE polymodal_requests_total counter",
            ]
            for (endpoint, method, status), n in sorted(self.requests.items()):
                lines.append(f"polymodal_requests_total{_labels(endpoint=endpoint, method=method, status=status)} {n}")
            lines += [
                "# HELP polymodal_request_duration_seconds Time from request start to response end.",
                "# TYPE polymodal_request_duration_seconds histogram",
            ]
            for endpoint, h in sorted(self.latency.items()):
                lines += h.lines("polymodal_request_duration_seconds", {"endpoint": endpoint})
            lines += [
                "# HELP polymodal_batch_size Items per model forward pass: kind image or text for requests (merged by "
                "the batcher), index for images added by /v1/index.",
                "# TYPE polymodal_batch_size histogram",
            ]
            for kind, h in sorted(self.batch_items.items()):
                lines += h.lines("polymodal_batch_size", {"kind": kind})
            lines += [
                "# HELP polymodal_batch_requests Requests with items in one model forward pass.",
                "# TYPE polymodal_batch_requests histogram",
            ]
            for kind, h in sorted(self.batch_requests.items()):
                lines += h.lines("polymodal_batch_requests", {"kind": kind})
            gauges = list(self.gauges.items())
        for name, (help_text, read) in gauges:  # read outside the lock: a gauge may query the index
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a failing gauge is left out, the rest still renders
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]
        return "\n".join(lines) + "\n"
