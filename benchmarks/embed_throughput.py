"""Images/s and texts/s of a model at batch 1 and 32, PyTorch (fp32 BatchNorm-folded, bf16) and onnxruntime.

    python benchmarks/embed_throughput.py --model lite                        # torch and onnx (exported to a temp dir)
    python benchmarks/embed_throughput.py --model lite --onnx-dir EXPORT      # an existing `polymodal export onnx`
    python benchmarks/embed_throughput.py --runtime torch,torch-bf16 --batches 1,8,32   # polymodal.load(precision="bf16")

End to end from decoded photos (preprocessing included). With both runtimes, ratio lines give onnx/torch per kind
and batch size (and torch-bf16/torch), measured in the same run, the runtimes alternating (this machine is noisy:
compare ratios, not absolute rates). torch-bf16 is left out, with a line saying so, on a CPU without bf16 kernels,
and onnx where the onnx extra is not installed.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import polymodal  # noqa: E402
from polymodal.data.samples import sample_photos  # noqa: E402
from polymodal.errors import PolymodalError  # noqa: E402
from polymodal.registry import require_embedding  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere (the tests load it by path)
from cpu_runtimes import runnable  # noqa: E402
from run_context import announce, counts  # noqa: E402

SENTENCES = [
    "a dog runs along the beach",
    "two children play football in a park",
    "a man rides a bicycle down a busy street",
    "a plate of food on a wooden table",
]


def _rate(fn, items: list, batch: int, seconds: float) -> float:
    """Items per second, cycling through all items in chunks of `batch` (same inputs for every batch size)."""
    fn(items[:batch], batch)  # warm-up
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        chunk = [items[(i + j) % len(items)] for j in range(batch)]
        fn(chunk, batch)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    ap.add_argument("--batches", type=counts, default=[1, 32], help="batch sizes, e.g. 1,8,32")
    ap.add_argument("--runtime", default="torch,torch-bf16,onnx", help="comma-separated: torch, torch-bf16, onnx")
    ap.add_argument("--onnx-dir", help="export of --model to measure (default: exported now into a temporary folder)")
    args = ap.parse_args(argv)
    announce(__file__)
    photos = [arr for arr, _ in sample_photos().values()]
    images = [photos[i % len(photos)] for i in range(64)]
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(64)]
    rates = {}
    with tempfile.TemporaryDirectory(prefix="embed-throughput-") as tmp:
        models = {}
        runtimes = runnable(args.runtime.split(","), "embed_throughput")
        if not runtimes:
            print("none of --runtime runs here (see the skipped lines); add torch", file=sys.stderr)
            return 2
        try:  # a mistyped --model or --onnx-dir, a VQA model: one line, not a traceback
            for runtime in runtimes:
                if runtime == "onnx":
                    folder = args.onnx_dir or _export(args.model, Path(tmp) / "onnx")
                    models[runtime] = polymodal.load(folder, runtime="onnx")
                else:
                    models[runtime] = polymodal.load(args.model,
                                                     precision="bf16" if runtime == "torch-bf16" else "fp32")
                require_embedding(models[runtime], args.model)
        except PolymodalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for batch in args.batches:
            for kind, items, method in (("images", images, "encode_image"), ("texts", texts, "encode_text")):
                for runtime, model in models.items():  # runtimes alternate: a busy spell slows them alike
                    encode = getattr(model, method)
                    rate = rates[(runtime, kind, batch)] = _rate(lambda x, b: encode(x, batch_size=b), items, batch,
                                                                 args.seconds)
                    variant = getattr(model, "variants", {}).get(kind[:-1], runtime)
                    print(json.dumps({"model": args.model, "runtime": runtime, "variant": variant, "kind": kind,
                                      "batch": batch, f"{kind}_per_s": round(rate, 1)}))
                    sys.stdout.flush()
    for (runtime, kind, batch), rate in rates.items():
        if runtime != "torch" and ("torch", kind, batch) in rates:
            print(json.dumps({"model": args.model, "ratio": f"{runtime}/torch", "kind": kind, "batch": batch,
                              "value": round(rate / rates[("torch", kind, batch)], 2)}))
    return 0


def _export(model: str, out: Path) -> str:
    from polymodal.export.onnx_export import export_onnx, validation_set

    export_onnx(polymodal.load(model), out, validation_set(None))
    return str(out)


if __name__ == "__main__":
    sys.exit(main())
