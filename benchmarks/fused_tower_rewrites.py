"""The BatchNorm-folded Lite0 copy with its stride-2 layers' one-sided pads moved inside kernels one wider
(polymodal.encoders.fused_lite, what fp32 inference runs now) vs the folded copy padding each input into a new
tensor (before), same run, alternating.

    python benchmarks/fused_tower_rewrites.py [--repeats 5] [--heap cli|glibc] [--commands index,train]

First the tower alone at batch 8 (the chunk inference runs in), in this process: ms per image each way and the
ratio of each alternating turn, and the largest feature difference between the two copies. Then whole commands in
fresh processes, old and new alternating: `polymodal index` of --photos (a new index each time) and `polymodal
train contrastive --config default --epochs 1` on the first --train-images photos of --pairs (a new feature cache
each time: the first run's caching is the tower's work). The old path is the same checkout with
`fused_copy(rewrite=False)`. Wall and CPU seconds (user + system) per run, and their ratios old/new.

`--heap cli` (default) runs the tower part with the CLI's heap setting (every command but `train`); `--heap glibc`
without it, as `train` runs. Machines here are shared: compare ratios from one run, and look at the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (benchmarks/omp_wait_policy.py); read when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from old_and_new import first_photos, spread, timed_run  # noqa: E402
from run_context import SHARED_DATA, announce  # noqa: E402

CHECKOUT = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "flickr8k-dev"

# runs the CLI with fused_copy's rewrites off (old) or on (new): the same checkout, one switch
_BOOT = ("import sys, functools\n"
         "import polymodal.encoders.fused_lite as f\n"
         "if sys.argv.pop(1) == 'old':\n"
         "    f.fused_copy = functools.partial(f.fused_copy, rewrite=False)\n"
         "from polymodal.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def tower(repeats: int, batch: int) -> None:
    import torch

    from polymodal.encoders.efficientnet import EfficientNetLite0
    from polymodal.encoders.fused_lite import fused_copy

    net = EfficientNetLite0().net
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        copies = {"old": fused_copy(net, rewrite=False), "new": fused_copy(net)}
        out = {k: c.extract_features(x) for k, c in copies.items()}  # (also the warm-up)
        diff = float((out["old"] - out["new"]).abs().max())
        ms = {k: [] for k in copies}
        for _ in range(repeats):
            for k, c in copies.items():
                start = time.perf_counter()
                for _ in range(3):
                    c.extract_features(x)
                ms[k].append((time.perf_counter() - start) * 1000 / (3 * batch))
    ratios = [o / n for o, n in zip(ms["old"], ms["new"])]
    print(json.dumps({"part": "tower", "batch": batch, "threads": torch.get_num_threads(), "turns": repeats,
                      "old_ms_per_image": spread(ms["old"]), "new_ms_per_image": spread(ms["new"]),
                      "old/new": spread(ratios), "max_abs_feature_diff": diff}), flush=True)


def commands(names: list[str], repeats: int, photos: Path, pairs: Path, train_images: int, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
    subset = work / "pairs.jsonl"
    if "train" in names:
        subset.write_text("\n".join(first_photos(pairs, train_images)[0]) + "\n")
    for name in names:
        times = {"old": [], "new": []}
        for turn in range(repeats):
            for path in ("old", "new") if turn % 2 == 0 else ("new", "old"):
                shutil.rmtree(work / "run", ignore_errors=True)
                if name == "index":
                    argv = ["index", str(photos), "--db", str(work / "run"), "--model", "lite"]
                    run_env = env
                else:
                    argv = ["train", "contrastive", "--config", "default", "--pairs", str(subset), "--epochs", "1",
                            "--warmup-steps", "1", "--out", str(work / "run"), "--quiet"]
                    run_env = {**env, "POLYMODAL_CACHE": str(work / "run" / "cache")}  # cold: the tower runs
                times[path].append(timed_run(["-c", _BOOT, path, *argv], run_env, f"{' '.join(argv[:2])} ({path})")[:2])
        wall = {k: [w for w, _ in v] for k, v in times.items()}
        cpu = {k: [c for _, c in v] for k, v in times.items()}
        print(json.dumps({"part": "command", "command": name, "turns": repeats,
                          "photos": train_images if name == "train" else len(list(photos.iterdir())),
                          "old_wall_s": spread(wall["old"]), "new_wall_s": spread(wall["new"]),
                          "old/new_wall": spread([o / n for o, n in zip(wall["old"], wall["new"])]),
                          "old_cpu_s": spread(cpu["old"]), "new_cpu_s": spread(cpu["new"]),
                          "old/new_cpu": spread([o / n for o, n in zip(cpu["old"], cpu["new"])])}), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="alternating turns of each part")
    ap.add_argument("--batch", type=int, default=8, help="tower batch (inference runs chunks of 8)")
    ap.add_argument("--heap", choices=("cli", "glibc"), default="cli",
                    help="the tower part with the CLI's heap setting (every command but train) or glibc's default")
    ap.add_argument("--commands", default="index,train", help="whole commands to time: index,train (or none)")
    ap.add_argument("--photos", type=Path, default=DATA / "images", help="folder for `polymodal index`")
    ap.add_argument("--pairs", type=Path, default=DATA / "pairs.jsonl", help="pairs for `train contrastive`")
    ap.add_argument("--train-images", type=int, default=200, help="photos of --pairs to train on")
    args = ap.parse_args(argv)
    names = [n for n in args.commands.split(",") if n and n != "none"]
    if bad := [n for n in names if n not in ("index", "train")]:
        ap.error(f"--commands takes index and/or train, got {','.join(bad)}")
    # checked before the tower part runs (minutes), and exiting 2 as the other scripts do for missing data
    if "train" in names and not args.pairs.is_file():
        print(f"error: no pairs file at {args.pairs}: pass --pairs (Flickr8k dev's pairs.jsonl)", file=sys.stderr)
        return 2
    if "index" in names and not args.photos.is_dir():
        print(f"error: no photo folder at {args.photos}: pass --photos", file=sys.stderr)
        return 2
    if args.heap == "cli":
        from polymodal.cli import _keep_freed_memory

        _keep_freed_memory()
    announce(__file__, heap=args.heap)
    tower(args.repeats, args.batch)
    if names:
        with tempfile.TemporaryDirectory() as tmp:
            commands(names, args.repeats, args.photos, args.pairs, args.train_images, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
