"""Multiple choice with answers outside a VQA model's vocabulary, scored by its ITM head.

    python benchmarks/vqa_choices_outside.py [--out DIR] [--train-images 1500] [--test-rows 600] [--epochs 4]

easy-VQA (the `easy-vqa` package) with two answers held out of the VQA vocabulary ("circle", "green"):
model A learns VQA on the rows with the other answers; then A is continued with an ITM head (`itm_weight` 1, every
layer trains) either on all rows ("all rows": since stop 34 the rows outside A's vocabulary train the ITM head) or
only on the rows inside it ("known rows": what all rows did before). Test shape and colour questions get 3 choices:
the truth, one other known answer, and one held-out answer (when the truth is held out: two known answers).
Scoring rules: "mixed" (shipped: known choices keep their full-vocabulary probability, unknown ones get the ITM
sigmoid), "calibrated" (unknown ones: ITM sigmoid x the VQA probability outside the row's known choices) and
"itm_all" (the ITM sigmoid for every choice). Prints one JSON line per (run, rule, group).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_context import announce  # noqa: E402

HELD = {"circle", "green"}
KINDS = {"shape": ["rectangle", "circle", "triangle"],
         "color": ["teal", "black", "green", "yellow", "blue", "gray", "red", "brown"]}


def kind(answer: str) -> str | None:
    return next((k for k, v in KINDS.items() if answer in v), None)


def test_cases(rows: list[dict], limit: int, seed: int = 0) -> list[tuple[dict, list[str]]]:
    rng = random.Random(seed)
    rows = [r for r in rows if kind(r["answer"])]
    rng.shuffle(rows)
    cases = []
    for r in rows[:limit]:
        known = [a for a in KINDS[kind(r["answer"])] if a not in HELD and a != r["answer"]]
        held = [a for a in KINDS[kind(r["answer"])] if a in HELD and a != r["answer"]]
        choices = [r["answer"]] + (rng.sample(known, 2) if r["answer"] in HELD else [rng.choice(known), rng.choice(held)])
        rng.shuffle(choices)
        cases.append((r, choices))
    return cases


def scores(model, image: str, question: str, choices: list[str]) -> dict[str, dict[str, float]]:
    """Each rule's score per choice, from the VQA head's probabilities and the ITM head's sigmoid."""
    import torch

    with torch.inference_mode():
        img = model.encode_images([image])
        states, mask = model.encode_questions([question])
        probs = model.vqa_logits(img, states, mask, torch.zeros(1, dtype=torch.long))[0].softmax(-1)
        states, mask = model.encode_questions([f"{question} {c}" for c in choices])
        match = torch.sigmoid(model.itm_logits(img, states, mask, torch.zeros(len(choices), dtype=torch.long)))
    p = {c: float(probs[model.answer_index[c]]) for c in choices if c in model.answer_index}
    s = dict(zip(choices, match.tolist()))
    outside = 1 - sum(p.values())
    return {"mixed": {c: p.get(c, s[c]) for c in choices},
            "calibrated": {c: p[c] if c in p else outside * s[c] for c in choices},
            "itm_all": s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="working folder (default: a temporary one)")
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--test-rows", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    announce(__file__)
    import polymodal
    from polymodal.train.vqa import VQARecipe, train_vqa
    from train_easy_vqa import write_easy_vqa

    out = Path(args.out or tempfile.mkdtemp(prefix="vqa-outside-"))
    data = out / "data"
    write_easy_vqa(data, max_train_images=args.train_images, max_test_images=max(100, args.train_images // 3))
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r["image"] = str(data / r["image"])
    qa = {}
    for name, keep in (("all", rows), ("known", [r for r in rows if r["answer"] not in HELD])):
        qa[name] = out / f"train_{name}.jsonl"
        qa[name].write_text("".join(json.dumps(r) + "\n" for r in keep))

    def run(name: str, **recipe) -> str:
        train_vqa(VQARecipe.from_dict(recipe | {"out": str(out / name)}), progress=False, overwrite=True)
        return str(out / name / "model")

    base = run("A", qa=str(qa["known"]), epochs=args.epochs, arch={"name": "outside-a", "fusion": "concat", "dim": 128})
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines() if line.strip()]
    cases = test_cases(test, args.test_rows)
    for rows_name in ("all", "known"):
        path = run(f"itm-{rows_name}", qa=str(qa[rows_name]), model=base, itm_weight=1.0, epochs=args.epochs, lr=2e-3)
        model = polymodal.load(path)
        tally: dict[tuple[str, str], list[int]] = {}
        for r, choices in cases:
            group = "truth_held_out" if r["answer"] in HELD else "truth_known"
            for rule, sc in scores(model, str(data / r["image"]), r["question"], choices).items():
                pick = max(sc, key=sc.get)
                t = tally.setdefault((rule, group), [0, 0, 0])
                t[0] += pick == r["answer"]
                t[1] += 1
                t[2] += pick in HELD
        for (rule, group), (right, n, held) in sorted(tally.items()):
            print(json.dumps({"itm_trained_on": f"{rows_name} rows", "rule": rule, "group": group, "rows": n,
                              "accuracy": round(right / n, 3), "picked_held_out": round(held / n, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
