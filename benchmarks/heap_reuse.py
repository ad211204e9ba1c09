"""The CLI's glibc heap setting (`cli._keep_freed_memory`, every command but `train`) against glibc's default:
CPU seconds (user, system) and peak memory of `polymodal index --runtime torch` over a folder, one JSON line per
run and a ratio line. `GLIBC_TUNABLES=` (set, empty) is the default's side: the CLI leaves malloc alone then.

    python benchmarks/heap_reuse.py                       # ../shared/data/flickr8k-dev/images (1,000 photos)
    python benchmarks/heap_reuse.py --images ~/Pictures --repeats 3

Runs alternate (heap kept, default, heap kept, ...) so a busy machine slows both alike; CPU seconds, not wall
time, are the figure to compare on a shared machine. Each run builds a fresh index in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402


def run_index(images: Path, db: Path, heap_kept: bool) -> dict:
    """One `polymodal index` in a child process -> its CPU seconds and peak resident memory (from wait4)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    if not heap_kept:
        env["GLIBC_TUNABLES"] = ""  # the CLI then leaves glibc's default in place
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "polymodal", "index", str(images), "--db", str(db), "--runtime", "torch", "--json"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    stderr = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"polymodal index failed: {stderr.strip().splitlines()[-1:]}")
    return {"user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=SHARED_DATA / "flickr8k-dev" / "images")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("error: the heap setting is glibc's (Linux); nothing to compare here", file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"error: no image folder at {args.images}; pass --images DIR", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    announce(__file__)
    runs: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kept in (True, False):
                try:
                    row = run_index(args.images, Path(tmp) / f"{kept}-{r}", kept)
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                runs[kept].append(row)
                print(json.dumps({"heap": "kept" if kept else "glibc default", "repeat": r, **row}), flush=True)
    cpu = {kept: statistics.median(row["cpu_s"] for row in rows) for kept, rows in runs.items()}
    peak = {kept: statistics.median(row["peak_mb"] for row in rows) for kept, rows in runs.items()}
    print(json.dumps({"images": str(args.images), "cpu_default_over_kept": round(cpu[False] / cpu[True], 3),
                      "peak_kept_over_default": round(peak[True] / peak[False], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
