"""`polymodal cache info` and `polymodal cache clear`: what the cache folder's derived files take, and reclaiming it.

Nothing prunes the feature cache as it fills: each training's image and caption lists, each `--views`/spatial/
trainable-block variant and each edit of the data (one caption, one photo) is a new whole file, and the old ones
stay (a day of a helper's trainings and tests: 685 MB in 252 files; a new image file copies the rows it shares with
old ones rather than encoding them: that saves time, not space; its rowkeys-image-<key>.npy is an entry too).
Entries are deleted one file at a time, never the folder: a run reading one holds it memory-mapped (on POSIX its
data stays readable until it closes it), a run that opens one just deleted computes it again, and a write in
progress (a hidden .tmp touched within the hour) is left alone. "Last used" is a file's mtime: load_cached touches
an entry each time it serves it.
ONNX exports under onnx/ are kept: they are made by `polymodal export onnx`, not recomputed by the next run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from polymodal.cache import cache_dir, remove_stale_temps

# image-<key>.npy, text-bank-<key>.npy, conse-classes-<key>.npy: only names polymodal gives are listed or deleted
# (POLYMODAL_CACHE pointed at a project folder: its own features/embeddings.npy was deleted by `cache clear`)
_KIND = re.compile(r"(.+)-[0-9a-f]{16,}\.npy")


def entries() -> list[dict]:
    """The recomputable files: features/*.npy and the class-prompt matrices, each {path, kind, bytes, used}."""
    root = cache_dir()
    found = []
    for path in [*_listed(root / "features", "*.npy"), *_listed(root, "conse-classes-*.npy")]:
        try:
            st = path.stat()
        except OSError:  # deleted meanwhile (another clear)
            continue
        found.append({"path": path, "kind": _KIND.fullmatch(path.name).group(1), "bytes": st.st_size,
                      "used": st.st_mtime})
    return found


def _listed(folder: Path, pattern: str) -> list[Path]:
    try:
        return [p for p in folder.glob(pattern)
                if not p.name.startswith(".") and _KIND.fullmatch(p.name) and p.is_file()]
    except OSError:
        return []


def _unfinished() -> list[Path]:
    """The hidden temporaries of feature writes (in progress, or left by a killed one)."""
    try:
        return [p for p in (cache_dir() / "features").glob(".*.tmp") if p.is_file()]
    except OSError:
        return []


def summary() -> dict:
    """`cache info`: totals, per kind, the least and most recently used, leftover temporaries and the ONNX exports."""
    found = entries()
    kinds: dict[str, dict] = {}
    for e in found:
        k = kinds.setdefault(e["kind"], {"files": 0, "bytes": 0})
        k["files"] += 1
        k["bytes"] += e["bytes"]
    used = [e["used"] for e in found]
    return {
        "folder": str(cache_dir()), "files": len(found), "bytes": sum(e["bytes"] for e in found),
        "oldest_used": _date(min(used)) if used else None, "newest_used": _date(max(used)) if used else None,
        "kinds": dict(sorted(kinds.items())),
        "unfinished_writes_bytes": sum(_size(p) for p in _unfinished()),
        "onnx_exports": {p.name: _tree_size(p) for p in sorted(_dirs(cache_dir() / "onnx"))},
    }


def clear(older_than_days: float | None = None) -> dict:
    """Delete the entries not used for ``older_than_days`` (all of them without it) and the temporaries of writes
    killed over an hour ago. -> {files, bytes, kept}: kept counts the entries left because they are newer or, on
    Windows, open in another process."""
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed, freed, kept = 0, 0, 0
    for e in entries():
        try:
            if cutoff is not None and e["path"].stat().st_mtime >= cutoff:  # asked again: a run may just have used it
                kept += 1
                continue
            e["path"].unlink()
        except FileNotFoundError:  # another clear took it
            continue
        except OSError:  # Windows: memory-mapped by a running training (POSIX unlinks it, the mapping lives on)
            kept += 1
            continue
        removed, freed = removed + 1, freed + e["bytes"]
    stale = remove_stale_temps(cache_dir() / "features")  # a live write touches its file every few seconds
    removed, freed = removed + len(stale), freed + sum(stale)
    return {"files": removed, "bytes": freed, "kept": kept}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _dirs(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _tree_size(folder: Path) -> int:
    total = 0
    for base, _, files in os.walk(folder):
        total += sum(_size(Path(base) / f) for f in files)
    return total


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def human(n: int) -> str:
    """Bytes as the README writes them: 2.5 KB, 125 KB, 1.2 GB (powers of 1,000)."""
    if n < 1000:
        return f"{n:,} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"
