"""Text batches cut in order of token counts, across encode_captions' chunks (what `eval retrieval` and zero-shot
prompts run now) vs in order of characters within each 512-caption chunk (before), same run, alternating.

    python benchmarks/text_token_order.py [--pairs ../shared/data/flickr8k-dev/pairs.jsonl] [--repeats 3]
                                          [--captions 5000] [--commands eval|none] [--eval-images 1000]

First `encode_captions` of --captions captions with `lite` on PyTorch, in this process: CPU and wall seconds each
way per alternating turn and their ratios, the tokens the batches ran (padding included) per real token each way,
and the largest vector difference. Then `polymodal eval retrieval --model lite` on the first --eval-images photos of
--pairs in fresh processes, old and new alternating (the old path: this checkout with the two changes undone: the
model counts no tokens, and encode_captions encodes its chunks in the captions' order). Compare ratios: the
machines here are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (benchmarks/omp_wait_policy.py); read when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_context.py (tests load scripts by path)
from old_and_new import first_photos, spread, timed_run  # noqa: E402
from run_context import SHARED_DATA, announce  # noqa: E402

CHECKOUT = Path(__file__).resolve().parents[1]
PAIRS = SHARED_DATA / "flickr8k-dev" / "pairs.jsonl"


def old_encode_captions(model, captions, progress=False, chunk=512, desc="captions"):
    """encode_captions before: model.encode_text over the chunks in the captions' order."""
    starts = range(0, len(captions), chunk)
    return np.concatenate([np.asarray(model.encode_text(captions[s:s + chunk])) for s in starts])


# runs the CLI with the old path (no token counts, chunks in the captions' order) or the new one
_BOOT = ("import sys\n"
         "if sys.argv.pop(1) == 'old':\n"
         "    import polymodal.eval.retrieval as r, polymodal.models.interface as i\n"
         "    sys.path.insert(0, sys.argv.pop(1))\n"
         "    from text_token_order import old_encode_captions\n"
         "    r.encode_captions = old_encode_captions\n"
         "    i.EmbeddingInterface.text_lengths = lambda self, texts: None\n"
         "else:\n"
         "    sys.argv.pop(1)\n"
         "from polymodal.cli import main\n"
         "sys.exit(main(sys.argv[1:]))\n")


def texts_part(captions: list[str], repeats: int) -> None:
    import torch

    import polymodal
    from polymodal.eval.retrieval import encode_captions

    model = polymodal.load("lite")
    real = model.text_lengths  # (the new path's; the old path counts characters)
    batched: list[int] = []
    embed = model.embed_texts

    def counting(texts):  # the tokens each batch runs: its texts x its longest
        batched.append(len(texts) * max(real(list(texts))))
        return embed(texts)

    def old():
        model.text_lengths = lambda texts: None
        try:
            return old_encode_captions(model, captions)
        finally:
            del model.text_lengths

    ways = {"old": old, "new": lambda: encode_captions(model, captions)}
    model.embed_texts = counting
    vectors, padded = {}, {}
    for name, fn in ways.items():
        batched.clear()
        vectors[name] = fn()
        padded[name] = sum(batched) / sum(real(captions))
    model.embed_texts = embed
    cpu, wall = {k: [] for k in ways}, {k: [] for k in ways}
    for turn in range(repeats):
        for name in ("old", "new") if turn % 2 == 0 else ("new", "old"):
            c, w = time.process_time(), time.perf_counter()
            ways[name]()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    print(json.dumps({"part": "texts", "model": "lite", "captions": len(captions), "threads": torch.get_num_threads(),
                      "turns": repeats, "old_cpu_s": spread(cpu["old"]), "new_cpu_s": spread(cpu["new"]),
                      "old/new_cpu": spread([o / n for o, n in zip(cpu["old"], cpu["new"])]),
                      "old/new_wall": spread([o / n for o, n in zip(wall["old"], wall["new"])]),
                      "old_tokens_per_real_token": round(padded["old"], 3),
                      "new_tokens_per_real_token": round(padded["new"], 3),
                      "max_abs_vector_diff": float(np.abs(vectors["old"] - vectors["new"]).max())}), flush=True)


def command_part(pairs: Path, images: int, repeats: int) -> None:
    rows, seen = first_photos(pairs, images)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), os.environ.get("PYTHONPATH", "")])}
    wall, cpu, figures = {"old": [], "new": []}, {"old": [], "new": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "pairs.jsonl"
        subset.write_text("\n".join(rows) + "\n")
        argv = ["eval", "retrieval", "--pairs", str(subset), "--model", "lite"]
        for turn in range(repeats):
            for path in ("old", "new") if turn % 2 == 0 else ("new", "old"):
                took, used, out = timed_run(["-c", _BOOT, path, str(CHECKOUT / "benchmarks"), *argv], env,
                                            f"eval retrieval ({path})")
                wall[path].append(took)
                cpu[path].append(used)
                figures[path] = json.loads(out.strip().splitlines()[-1])
    same = {k: figures["old"][k] for k in figures["old"] if "R@" in k or "median" in k}
    print(json.dumps({"part": "command", "command": "eval retrieval --model lite", "images": len(seen),
                      "captions": len(rows), "turns": repeats, "old_wall_s": spread(wall["old"]),
                      "new_wall_s": spread(wall["new"]),
                      "old/new_wall": spread([o / n for o, n in zip(wall["old"], wall["new"])]),
                      "old_cpu_s": spread(cpu["old"]), "new_cpu_s": spread(cpu["new"]),
                      "old/new_cpu": spread([o / n for o, n in zip(cpu["old"], cpu["new"])]),
                      "same_figures": all(figures["new"][k] == v for k, v in same.items()), "figures": same}),
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, default=PAIRS, help="Flickr8k dev's pairs.jsonl (captions and photos)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating turns of each part")
    ap.add_argument("--captions", type=int, default=5000, help="captions of --pairs encoded in this process")
    ap.add_argument("--commands", choices=("eval", "none"), default="eval")
    ap.add_argument("--eval-images", type=int, default=1000, help="photos of --pairs for eval retrieval")
    args = ap.parse_args(argv)
    if not args.pairs.is_file():
        ap.error(f"no pairs file at {args.pairs}: pass --pairs (Flickr8k dev's pairs.jsonl)")
    announce(__file__)
    captions = [json.loads(line)["caption"] for line in args.pairs.read_text().splitlines()][: args.captions]
    texts_part(captions, args.repeats)
    if args.commands == "eval":
        command_part(args.pairs, args.eval_images, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
