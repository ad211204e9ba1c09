"""Captioning speed: beam search keeping keys/values (generate's default) vs rerunning [prefix ; words] each step.

    python benchmarks/caption_speed.py [--photos 32] [--beam 3]
    python benchmarks/caption_speed.py --onnx DIR    # whole caption() calls on decoded photos (image tower + beam
                                                     # search; JPEG decoding is not timed): PyTorch vs the export
                                                     # in DIR (`polymodal export onnx captioner --out DIR`)

Both decode the same photos (scikit-image's gallery, repeated) from the built-in captioner; prints one JSON line per
way and their ratio, and whether the captions agree.
"""

import argparse
import json
import os
import sys
import tempfile
import time

# Idle OpenMP threads sleep unless the caller chose (OMP_WAIT_POLICY=ACTIVE for a quiet machine), as the CLI does
# (polymodal/cli.py): beside other jobs, spinning threads made this ratio swing by several times from run to run
# (benchmarks/omp_wait_policy.py). OpenMP reads it when torch loads; each line records it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--onnx", help="an export folder of the captioner: compare whole caption() calls with it instead")
    args = ap.parse_args(argv)
    announce(__file__)

    import polymodal
    from polymodal.data.samples import write_sample_gallery
    from polymodal.errors import PolymodalError

    if args.onnx:  # a wrong folder: one line before anything loads, not a traceback
        try:
            exported = polymodal.load(args.onnx, runtime="onnx")
        except PolymodalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not hasattr(exported, "caption"):
            print(f"error: {args.onnx} is not a captioner's export (`polymodal export onnx captioner --out DIR`)",
                  file=sys.stderr)
            return 2
    model = polymodal.load("captioner").eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_sample_gallery(tmp)
        photos = [paths[i % len(paths)] for i in range(args.photos)]
        if args.onnx:
            from polymodal.data.images import load_image

            images = [load_image(p) for p in photos]
            ways = {"onnx": lambda: exported.caption(images, beam=args.beam),
                    "pytorch": lambda: model.caption(images, beam=args.beam)}
        else:
            grid = model.encode_images(photos)  # computed beforehand: only the beam search is timed
            batches = [grid[i : i + 16] for i in range(0, len(grid), 16)]
            ways = {"cached": lambda: [c for g in batches for c in model.generate(g, beam=args.beam)],
                    "rerun": lambda: [c for g in batches for c in model.generate(g, beam=args.beam, use_cache=False)]}
        results, outputs = {}, {}
        with torch.no_grad():
            for _ in range(args.repeats):  # alternate, so that both see the same machine load
                for name, fn in ways.items():
                    t0 = time.perf_counter()
                    outputs[name] = fn()
                    results.setdefault(name, []).append(time.perf_counter() - t0)
    for name, times in results.items():
        print(json.dumps({"decoding": name, "photos": args.photos, "beam": args.beam,
                          "photos_per_s": round(args.photos / min(times), 2), "threads": torch.get_num_threads(),
                          "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}))
    first, second = ways
    print(json.dumps({f"{first}_over_{second}": round(min(results[second]) / min(results[first]), 2),
                      "same_captions": outputs[first] == outputs[second]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
