"""Multiple-choice VQA speed: ``predict_choices`` (batched) against ``answer(..., choices=...)`` one row at a time,
on easy-VQA test questions (the `easy-vqa` package), same rows, same process.

    python benchmarks/vqa_choices.py [--rows 300] [--choices 3] [--model easy-vqa]

Each row's choices are its answer and up to --choices - 1 distractors of its kind (the other of yes/no; for other
questions, other non-yes/no answers of the model), drawn with a fixed seed. Prints one JSON line per way (rows,
seconds, rows per second), then one with the speed-up (as a ratio: this machine is noisy), whether both ways chose
the same answers, and the multiple-choice accuracy beside the open-ended accuracy on the same rows. For a fusion
encoder, a third way: `eval vqa`'s path with the feature cache already filled (no tower pass), and its accuracy
(float16 features in the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402


def easy_vqa_rows(limit: int) -> list[dict]:
    try:
        from easy_vqa import get_test_image_paths, get_test_questions
    except ImportError as exc:
        raise SystemExit("this benchmark needs the easy-vqa package: pip install easy-vqa") from exc
    paths = get_test_image_paths()
    return [{"image": paths[i], "question": q, "answer": a} for q, a, i in list(zip(*get_test_questions()))[:limit]]


def with_choices(rows: list[dict], answers: list[str], k: int, seed: int) -> list[dict]:
    from polymodal.data.answers import YES_NO

    rng = random.Random(seed)
    others = [a for a in answers if a not in YES_NO]
    out = []
    for r in rows:
        pool = [a for a in (YES_NO if r["answer"] in YES_NO else others) if a != r["answer"]]
        choices = [r["answer"], *rng.sample(pool, min(k - 1, len(pool)))]
        rng.shuffle(choices)
        out.append({**r, "choices": choices})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--choices", type=int, default=3, help="candidates per row, the answer included")
    p.add_argument("--model", default="easy-vqa")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    announce(__file__)

    import polymodal
    from polymodal.errors import PolymodalError
    from polymodal.eval.vqa import vqa_accuracy
    from polymodal.registry import require_vqa

    try:  # a mistyped --model, or one that does not answer questions: one line, not a traceback
        model = require_vqa(polymodal.load(args.model), args.model)
    except PolymodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = with_choices(easy_vqa_rows(args.rows), list(model.answers), args.choices, args.seed)
    images, questions, choices = ([r[k] for r in rows] for k in ("image", "question", "choices"))
    model.predict_choices(images[:2], questions[:2], choices[:2])  # warm-up: first-call costs out of both timings

    timed = {}
    t = time.perf_counter()
    one_by_one = [model.answer(i, q, choices=c, top_k=1)["answer"] for i, q, c in zip(images, questions, choices)]
    timed["answer_per_row"] = time.perf_counter() - t
    t = time.perf_counter()
    batched = [a for a, _ in model.predict_choices(images, questions, choices)]
    timed["predict_choices"] = time.perf_counter() - t
    cached = None
    if hasattr(model, "image_cache_input"):  # the fusion encoder: eval vqa reads photos and questions from the cache
        vqa_accuracy(model, rows)  # fills the feature cache (or finds it filled by an earlier run)
        t = time.perf_counter()
        cached = vqa_accuracy(model, rows)["accuracy"]
        timed["eval_warm_cache"] = time.perf_counter() - t
    for way, seconds in timed.items():
        print(json.dumps({"way": way, "model": args.model, "rows": len(rows), "seconds": round(seconds, 3),
                          "rows_per_s": round(len(rows) / seconds, 1)}), flush=True)

    open_rows = [{k: v for k, v in r.items() if k != "choices"} for r in rows]
    print(json.dumps({
        "speedup": round(timed["answer_per_row"] / timed["predict_choices"], 2),
        "same_choices": sum(a == b for a, b in zip(one_by_one, batched)) / len(rows),
        "multiple_choice_accuracy": round(vqa_accuracy(model, rows, cache=False)["accuracy"], 4),
        **({"multiple_choice_accuracy_cached": round(cached, 4),
            "warm_cache_vs_predict_choices": round(timed["predict_choices"] / timed["eval_warm_cache"], 2)}
           if cached is not None else {}),
        "open_accuracy": round(vqa_accuracy(model, open_rows, cache=False)["accuracy"], 4),
        "choices_per_row": args.choices,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
