"""The runtimes a benchmark asked for that this machine can run: torch-bf16 needs native bf16 kernels (avx512_bf16 or
AMX), onnx needs the onnx extra (onnx and onnxruntime); elsewhere each is left out with one JSON line saying why,
instead of the whole run failing on it."""

import json


def _skip(bench: str, runtime: str, why: str) -> None:
    print(json.dumps({"bench": bench, "runtime": runtime, "skipped": why}), flush=True)


def runnable(runtimes: list[str], bench: str) -> list[str]:
    from polymodal.encoders.frozen_trunk import bf16_supported

    if "torch-bf16" in runtimes and not bf16_supported():
        _skip(bench, "torch-bf16", "this CPU has no bf16 instructions (avx512_bf16 or AMX): bf16 would be emulated, "
              "slower than fp32")
        runtimes = [r for r in runtimes if r != "torch-bf16"]
    if "onnx" in runtimes:
        try:
            import onnx  # noqa: F401  (the export)
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            _skip(bench, "onnx", f"{exc.name or exc} is not installed: pip install 'polymodal[onnx]'")
            runtimes = [r for r in runtimes if r != "onnx"]
    return runtimes
