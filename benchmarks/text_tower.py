"""The MiniLM text tower: polymodal's plain-torch BERT against transformers' BertModel; one JSON line each.

    python benchmarks/text_tower.py                 # start-up (fresh process: imports, load, first sentence)
    python benchmarks/text_tower.py --repeats 5 --seconds 5

Start-up runs each side in a fresh interpreter, alternating, and reports the median; throughput is texts/s at
batch 1 and 32 in this process. Ratio lines (polymodal / transformers) are what to compare: this machine is noisy.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Idle OpenMP threads sleep unless the caller chose (OMP_WAIT_POLICY=ACTIVE for a quiet machine), as the CLI does
# (polymodal/cli.py): beside other jobs, spinning threads made this ratio swing by several times from run to run
# (benchmarks/omp_wait_policy.py). OpenMP reads it when torch loads; each line records it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

STARTUP = {
    "polymodal": (
        "from polymodal.encoders.text import SentenceEncoder, minilm_path\n"
        "SentenceEncoder(minilm_path())(['a dog on the beach'])\n"
    ),
    "transformers": (
        "import torch\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "from transformers.utils import logging\n"
        "logging.disable_progress_bar()\n"
        "from polymodal.encoders.text import minilm_path\n"
        "p = str(minilm_path())\n"
        "tok = AutoTokenizer.from_pretrained(p, local_files_only=True)\n"
        "model = AutoModel.from_pretrained(p, local_files_only=True).eval()\n"
        "with torch.no_grad():\n"
        "    model(**tok(['a dog on the beach'], return_tensors='pt'))\n"
    ),
}
SENTENCES = ["a dog runs along the beach", "two children play football in a park",
             "a man rides a bicycle down a busy street", "a plate of food on a wooden table"]


def startup_seconds(side: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", STARTUP[side]], check=True)
    return time.perf_counter() - t0


def texts_per_second(encode, batch: int, seconds: float) -> float:
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    encode(texts)  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        encode(texts)
        done += batch
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per side for start-up")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per throughput measurement")
    args = ap.parse_args(argv)
    announce(__file__)

    times = {side: [] for side in STARTUP}
    for _ in range(args.repeats):
        for side in STARTUP:  # alternating, so load on the machine hits both alike
            times[side].append(startup_seconds(side))
    median = {side: statistics.median(t) for side, t in times.items()}
    for side, t in times.items():
        print(json.dumps({"bench": "text_tower_startup", "side": side, "median_s": round(median[side], 2),
                          "runs_s": [round(x, 2) for x in t]}))
    print(json.dumps({"bench": "text_tower_startup", "ratio": "polymodal/transformers",
                      "value": round(median["polymodal"] / median["transformers"], 3)}))

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from polymodal.encoders.text import SentenceEncoder, minilm_path

    hf_logging.disable_progress_bar()
    ours = SentenceEncoder(minilm_path())
    theirs = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()

    def encode_theirs(texts):
        batch = ours.tokenize(texts)
        states = theirs(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1)

    with torch.inference_mode():
        for batch in (1, 32):
            rates = {"polymodal": texts_per_second(ours, batch, args.seconds),
                     "transformers": texts_per_second(encode_theirs, batch, args.seconds)}
            for side, rate in rates.items():
                print(json.dumps({"bench": "text_tower_throughput", "side": side, "batch": batch,
                                  "texts_per_s": round(rate, 1), "threads": torch.get_num_threads(),
                                  "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}))
            print(json.dumps({"bench": "text_tower_throughput", "batch": batch, "ratio": "polymodal/transformers",
                              "value": round(rates["polymodal"] / rates["transformers"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
