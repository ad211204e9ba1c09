"""`polymodal cache info` and `polymodal cache clear [--older-than DAYS]` (see cache_admin)."""

from __future__ import annotations

import json
import math

from polymodal.errors import PolymodalError


def cmd_cache_info(args) -> int:
    from polymodal.cache_admin import human, summary
    from polymodal.cli import _table

    info = summary()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"cache folder: {info['folder']}")
    if not info["files"]:
        print("feature cache: empty")
    else:
        print(f"feature cache: {human(info['bytes'])} in {info['files']:,} files, last used {info['oldest_used']} "
              f"(least recently) to {info['newest_used']}")
        print(_table([(kind, f"{k['files']:,}", human(k["bytes"])) for kind, k in info["kinds"].items()],
                     ("kind", "files", "size")))
    if info["unfinished_writes_bytes"]:
        print(f"unfinished writes (hidden .tmp files): {human(info['unfinished_writes_bytes'])}")
    exports = ", ".join(f"{n} ({human(b)})" for n, b in info["onnx_exports"].items())
    print(f"ONNX exports (kept by `cache clear`): {exports or 'none'}")
    if info["files"]:
        print("`polymodal cache clear` deletes the feature cache (`--older-than DAYS`: what no run used for DAYS "
              "days); the next run computes what it needs again")
    return 0


def cmd_cache_clear(args) -> int:
    from polymodal.cache_admin import clear, human

    days = args.older_than
    if days is not None and not (days >= 0 and math.isfinite(days)):  # (also refuses nan)
        raise PolymodalError(f"--older-than must be a number of days, 0 or more, got {days}")
    done = clear(days)
    if args.json:
        print(json.dumps(done))
        return 0
    kept = (f"; kept {done['kept']:,} used within the last {days:g} days (or open in another process)"
            if done["kept"] else "")
    print(f"deleted {done['files']:,} files, {human(done['bytes'])}{kept}")
    return 0


def add_parsers(sub) -> None:
    cache = sub.add_parser("cache", help="the feature cache training and search --texts fill: its size, clearing it"
                           ).add_subparsers(dest="action", metavar="{info,clear}", required=True)
    s = cache.add_parser("info", help="the cache folder, its feature files' size per kind and when they were last used")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_cache_info)
    s = cache.add_parser("clear", help="delete cached features (computed again when a run needs them); ONNX exports "
                         "are kept. Safe while other runs use the cache")
    s.add_argument("--older-than", type=float, metavar="DAYS",
                   help="only the files no run has used for DAYS days (e.g. 30; 0.5 is 12 hours)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_cache_clear)
