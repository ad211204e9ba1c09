"""PyTorch CPU speed with OpenMP's default spin-waiting vs OMP_WAIT_POLICY=PASSIVE, on a quiet and a busy machine.

    python benchmarks/omp_wait_policy.py                 # text and image towers, batch 32 / 8
    python benchmarks/omp_wait_policy.py --seconds 5 --busy 2
    python benchmarks/omp_wait_policy.py --repeats 4 --policies default,PASSIVE,spin:3000   # GOMP_SPINCOUNT=3000

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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

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


def measure(policy: str, seconds: float) -> dict:
    """One fresh interpreter under `policy`: "default" (OpenMP's own), an OMP_WAIT_POLICY value (PASSIVE, ACTIVE),
    or "spin:N" (GOMP_SPINCOUNT=N: GNU OpenMP, which the PyPI torch wheels bundle, spins N times, then sleeps)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("spin:"):
        env["GOMP_SPINCOUNT"] = policy.split(":", 1)[1]
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", MEASURE, str(seconds)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    ap.add_argument("--busy", type=int, default=1, help="spinning processes in the busy condition")
    ap.add_argument("--policies", default="default,PASSIVE",
                    help="comma-separated: default, PASSIVE, ACTIVE or spin:N (GOMP_SPINCOUNT); ratios are to the first")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the policies, interleaved; the median is kept")
    args = ap.parse_args(argv)
    announce(__file__)
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    base = policies[0]
    for condition in ("quiet", "busy"):
        stop = multiprocessing.Event()
        spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
                    for _ in range(args.busy if condition == "busy" else 0)]
        for p in spinners:
            p.start()
        try:
            runs = {policy: [] for policy in policies}
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every policy
                for policy in policies:
                    runs[policy].append(measure(policy, args.seconds))
            got = {policy: {k: float(np.median([r[k] for r in rs])) if isinstance(rs[0][k], float) else rs[0][k]
                            for k in rs[0]} for policy, rs in runs.items()}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        for policy, rates in got.items():
            print(json.dumps({"bench": "omp_wait_policy", "condition": condition, "policy": policy,
                              **{k: round(v, 1) if isinstance(v, float) else v for k, v in rates.items()}}))
        for policy in policies[1:]:
            for kind in ("text_batch32", "image_batch8"):
                print(json.dumps({"bench": "omp_wait_policy", "condition": condition, "kind": kind,
                                  "ratio": f"{policy}/{base}", "value": round(got[policy][kind] / got[base][kind], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
