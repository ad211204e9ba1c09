"""What the old-vs-new benchmarks share (fused_tower_rewrites.py, text_token_order.py): the spread of a measurement
over turns, a timed CLI run in a fresh process, and a pairs file cut to its first photos.

    from old_and_new import first_photos, spread, timed_run    # the script's folder is on sys.path
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def spread(values: list[float]) -> dict:
    """{"median", "min", "max"} of a measurement over the turns of a run."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def timed_run(argv: list[str], env: dict, what: str) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of `python argv...` in a fresh process; a failure ends the benchmark, naming ``what``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def first_photos(pairs: Path, photos: int) -> tuple[list[str], list[str]]:
    """The JSONL rows (image paths made absolute) of the first ``photos`` photos of ``pairs``, with every caption of
    theirs -> (rows, those photos)."""
    rows, seen = [], []
    for line in pairs.read_text().splitlines():
        row = json.loads(line)
        row["image"] = str((pairs.parent / row["image"]).resolve())
        if row["image"] not in seen:
            if len(seen) == photos:
                continue
            seen.append(row["image"])
        rows.append(json.dumps(row))
    return rows, seen
