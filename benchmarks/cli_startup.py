"""Wall time of one `polymodal search` on an index built with a trained model folder, the way a user runs it,
against the same search with the CLIP loaders imported first (what every model folder's load did before stop 34:
they bring transformers).

    python benchmarks/cli_startup.py [--repeats 5] [--out DIR]

Builds a small dual-encoder folder (recipes/default.json's heads, untrained) and an index of the sample photos in
DIR (default: a temporary folder), then alternates the two ways --repeats times, each in a fresh interpreter.
Prints one JSON line per way (median seconds) and one with the ratio (noisy machines: compare ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

SEARCH = "from polymodal.cli import main; sys.exit(main(sys.argv[1:]))"
WAYS = {"now": f"import sys; {SEARCH}",
        "clip_loaders_first": f"import sys; import polymodal.models.clip; {SEARCH}"}


def setup(out: Path) -> Path:
    """DIR/model (a dual encoder) and DIR/pics.idx (the sample photos, embedded with it)."""
    from polymodal import cli
    from polymodal.data.samples import write_sample_gallery
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    arch = json.loads((ROOT / "recipes" / "default.json").read_text())["arch"] | {"name": "bench"}
    model = DualEncoder(DualEncoderConfig.from_dict(arch)).save(out / "model")
    photos = out / "photos"
    write_sample_gallery(photos)
    with contextlib.redirect_stdout(io.StringIO()):  # stdout is for this script's own JSON lines
        code = cli.main(["index", str(photos), "--db", str(out / "pics.idx"), "--model", str(model), "--json"])
    if code != 0:
        raise SystemExit("indexing the sample photos failed")
    return out / "pics.idx"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    announce(__file__)
    out = Path(args.out or tempfile.mkdtemp(prefix="cli-startup-"))
    db = setup(out)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, code in WAYS.items():  # alternated: a busy spell slows both ways alike
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code, "search", "a cat", "--db", str(db), "-k", "1", "--json"],
                                  capture_output=True, text=True, cwd=ROOT)
            times[way].append(time.perf_counter() - t)
            if done.returncode != 0:
                raise SystemExit(f"{way}: search failed: {done.stderr[-500:]}")
    for way, seconds in times.items():
        print(json.dumps({"way": way, "runs": len(seconds), "median_s": round(statistics.median(seconds), 3)}))
    ratio = statistics.median(times["clip_loaders_first"]) / statistics.median(times["now"])
    print(json.dumps({"clip_loaders_first_over_now": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
