"""The runtimes a benchmark asked for that this CPU can run: torch-bf16 needs native bf16 kernels (avx512_bf16 or
AMX); elsewhere it is left out with one JSON line saying why, instead of the whole run failing on it."""

import json


def runnable(runtimes: list[str], bench: str) -> list[str]:
    from polymodal.encoders.frozen_trunk import bf16_supported

    if "torch-bf16" not in runtimes or bf16_supported():
        return runtimes
    print(json.dumps({"bench": bench, "runtime": "torch-bf16", "skipped": "this CPU has no bf16 instructions "
                      "(avx512_bf16 or AMX): bf16 would be emulated, slower than fp32"}), flush=True)
    return [r for r in runtimes if r != "torch-bf16"]
