"""PyTorch CPU speed with OpenMP's default spin-waiting vs OMP_WAIT_POLICY=PASSIVE, on a quiet and a busy machine.

    python benchmarks/omp_wait_policy.py                 # text and image towers, batch 32 / 8
    python benchmarks/omp_wait_policy.py --seconds 5 --busy 2

Each measurement runs in a fresh interpreter (the policy is read when torch loads OpenMP). "busy" starts --busy
processes that spin on the CPU meanwhile, as other jobs do on a shared machine. Ratio lines compare the policies
in the same condition. polymodal's CLI sets PASSIVE unless OMP_WAIT_POLICY is already set (polymodal/cli.py).
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

MEASURE = r"""
import json, sys, time
import torch
from polymodal.encoders.text import SentenceEncoder, minilm_path
import polymodal
from polymodal.data.samples import sample_photos
seconds = float(sys.argv[1])
text = SentenceEncoder(minilm_path())
sentences = ["a dog runs along the beach", "two children play football in a park",
             "a man rides a bicycle down a busy street", "a plate of food on a wooden table"] * 8
tokens = text.tokenize(sentences)
lite = polymodal.load("lite")
photos = [a for a, _ in sample_photos().values()][:8]
rates = {}
for name, fn, n in [("text_batch32", lambda: text.model(**tokens), 32),
                    ("image_batch8", lambda: lite.encode_image(photos, batch_size=8), 8)]:
    with torch.inference_mode():
        fn()
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            done += n
    rates[name] = done / (time.perf_counter() - t0)
print(json.dumps({"threads": torch.get_num_threads(), **rates}))
"""


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def measure(policy: str | None, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", MEASURE, str(seconds)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--busy", type=int, default=1, help="spinning processes in the busy condition")
    args = ap.parse_args(argv)
    for condition in ("quiet", "busy"):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                    for _ in range(args.busy if condition == "busy" else 0)]
        for p in spinners:
            p.start()
        try:
            got = {policy or "default": measure(policy, args.seconds) for policy in (None, "PASSIVE")}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        for policy, rates in got.items():
            print(json.dumps({"bench": "omp_wait_policy", "condition": condition, "policy": policy,
                              **{k: round(v, 1) if isinstance(v, float) else v for k, v in rates.items()}}))
        for kind in ("text_batch32", "image_batch8"):
            print(json.dumps({"bench": "omp_wait_policy", "condition": condition, "kind": kind,
                              "ratio": "passive/default",
                              "value": round(got["PASSIVE"][kind] / got["default"][kind], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
