"""`train contrastive`'s frozen-tower passes, each timed against the way it ran before, in the same run:
  text     caching text features (captions, hard negatives, prompts): batches cut in order of length vs in the
           captions' order (each batch is padded to its longest caption)
  questions `train vqa`'s question token states: the same, batches of 256 distinct questions
  zeroshot `--zeroshot-labels`' score after each epoch: the towers' outputs on the labelled photos and the class
           prompts kept from the first epoch (only the heads run later) vs `zeroshot_accuracy` over the photos and
           prompts every epoch
CPU seconds (time.process_time: the machine is shared), the two ways alternating; one JSON line per measurement,
with the largest difference between the two results (or whether the figures are equal), then a ratio line.

    python benchmarks/train_caching.py [--photos 50] [--captions 1000] [--epochs 3] [--parts text,questions,zeroshot]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # (see benchmarks/omp_wait_policy.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# weak labels from the captions: a photo is labelled with the first category two or more of its captions name
CATEGORIES = {"dog": r"dogs?|puppy", "child": r"child|children|boys?|girls?|kids?", "man": r"m[ae]n",
              "woman": r"wom[ae]n", "water": r"water|beach|ocean|lake|pool", "bicycle": r"bikes?|bicycles?",
              "snow": r"snow|snowy|ski\w*", "grass": r"grass|grassy|field"}


def labelled_photos(rows: list, folder: Path, n: int) -> tuple[list[Path], list[str]]:
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(row["image"], []).append(row["caption"].lower())
    images, labels = [], []
    for image, texts in captions.items():
        for label, words in CATEGORIES.items():
            if sum(bool(re.search(rf"\b({words})\b", t)) for t in texts) >= 2:
                images.append(folder / image)
                labels.append(label)
                break
        if len(images) == n:
            break
    return images, labels


def _cpu(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=Path, default=SHARED_DATA / "flickr8k-dev" / "pairs.jsonl")
    ap.add_argument("--config", type=Path, default=ROOT / "recipes" / "default.json", help="the recipe's arch")
    ap.add_argument("--photos", type=int, default=50, help="labelled photos for zero-shot")
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3, help="zero-shot scores timed (heads changed between them)")
    ap.add_argument("--qa", type=Path, default=SHARED_DATA / "vqa-coco-yesno-train" / "qa.jsonl")
    ap.add_argument("--parts", default="text,questions,zeroshot")
    args = ap.parse_args(argv)
    if not args.pairs.is_file():
        print(f"error: no pairs file at {args.pairs}; pass --pairs FILE.jsonl", file=sys.stderr)
        return 2
    if args.parts.split(",") == ["questions"] and not args.qa.is_file():  # nothing else would run
        print(f"error: no QA file at {args.qa}; pass --qa FILE.jsonl", file=sys.stderr)
        return 2
    import tempfile

    # nothing cached beforehand; the folder and the setting end with the run (left behind, each run kept a folder
    # in /tmp, and a test calling main() in-process moved the rest of its process's caches there)
    previous = os.environ.get("POLYMODAL_CACHE")
    with tempfile.TemporaryDirectory(prefix="train-caching-") as cache:
        os.environ["POLYMODAL_CACHE"] = cache
        try:
            return _measure(args)
        finally:
            if previous is None:
                os.environ.pop("POLYMODAL_CACHE", None)
            else:
                os.environ["POLYMODAL_CACHE"] = previous


def _measure(args) -> int:
    import numpy as np
    import torch

    from polymodal.eval.zeroshot import zeroshot_accuracy
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
    from polymodal.train.contrastive import ZeroShotTowerOutputs
    from polymodal.train.features import _encode_texts

    announce(__file__)
    rows = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    arch = json.loads(args.config.read_text())["arch"]
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig.from_dict(arch)).eval()
    parts = args.parts.split(",")
    ratios = {}

    if "text" in parts:
        captions = [row["caption"] for row in rows][: args.captions]
        starts = range(0, len(captions), 128)  # text_features' batches
        _encode_texts(model, captions[:16], range(0, 16, 128), 128)  # warm-up
        with torch.inference_mode():
            old, t_old = _cpu(lambda: _encode_texts(model, captions, starts, 128, by_length=False))
            new, t_new = _cpu(lambda: _encode_texts(model, captions, starts, 128))
        tokens = model.text_tower.tokenize(captions)["attention_mask"].sum(1).numpy()

        def padded(order):  # tokens the tower ran, padding included, over the tokens of the captions
            return sum(len(b) * tokens[b].max() for b in np.split(order, range(128, len(order), 128))) / tokens.sum()

        diff = float(np.abs(old - new).max())
        for way, sec, order in (("caption_order", t_old, np.arange(len(captions))),
                                ("length_order", t_new, np.argsort([len(c) for c in captions], kind="stable"))):
            print(json.dumps({"part": "text", "way": way, "captions": len(captions), "cpu_s": round(sec, 3),
                              "tokens_run_per_token": round(float(padded(order)), 3)}))
        print(json.dumps({"part": "text", "max_abs_diff": diff}))
        ratios["text_caching"] = round(t_old / t_new, 2)

    if "questions" in parts and not args.qa.is_file():
        print(f"note: no QA file at {args.qa} (--qa FILE.jsonl): questions left out", file=sys.stderr)
    elif "questions" in parts:
        from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
        from polymodal.train.vqa import _question_states

        qa = [json.loads(line) for line in args.qa.read_text(encoding="utf-8").splitlines() if line.strip()]
        questions = list(dict.fromkeys(row["question"] for row in qa))  # question_features gets distinct ones
        fusion = FusionEncoder(FusionEncoderConfig(answers=["yes", "no"])).eval()
        _question_states(fusion, questions[:8], 256)  # warm-up
        (s_old, l_old), t_old = _cpu(lambda: _question_states(fusion, questions, 256, by_length=False))
        (s_new, l_new), t_new = _cpu(lambda: _question_states(fusion, questions, 256))
        for way, sec in (("question_order", t_old), ("length_order", t_new)):
            print(json.dumps({"part": "questions", "way": way, "questions": len(questions), "cpu_s": round(sec, 3)}))
        print(json.dumps({"part": "questions", "same_lengths": bool((l_old == l_new).all()),
                          "same_shape": s_old.shape == s_new.shape,
                          "max_abs_diff": float(np.abs(s_old.astype(np.float32) - s_new.astype(np.float32)).max()),
                          # stored as float16 (a step of 0.002-0.004 at 4-8): ~1e-6 apart can round a step apart
                          "largest_state": float(np.abs(s_old.astype(np.float32)).max())}))
        ratios["question_caching"] = round(t_old / t_new, 2)

    if "zeroshot" in parts:
        images, labels = labelled_photos(rows, args.pairs.parent, args.photos)
        kept = ZeroShotTowerOutputs(images, labels)
        heads = [p for n, p in model.named_parameters() if n.startswith(("image_head", "text_head"))]
        old_s = new_s = later_old = later_new = 0.0
        same = True
        for epoch in range(args.epochs):
            with torch.no_grad():  # an epoch's training: the heads change, the towers do not
                for p in heads:
                    p.add_(torch.randn_like(p) * 0.02)
            model.forget_label_embeddings()
            old, t_old = _cpu(lambda: zeroshot_accuracy(model, images, labels))
            new, t_new = _cpu(lambda: kept.score(model))
            old_s, new_s = old_s + t_old, new_s + t_new
            if epoch:
                later_old, later_new = later_old + t_old, later_new + t_new
            same = same and (old["top1"], old["top5"]) == (new["top1"], new["top5"])
            print(json.dumps({"part": "zeroshot", "epoch": epoch + 1, "photos": len(images),
                              "classes": len(set(labels)), "old_cpu_s": round(t_old, 3), "kept_cpu_s": round(t_new, 3),
                              "old_top1": old["top1"], "kept_top1": new["top1"], "old_top5": old["top5"],
                              "kept_top5": new["top5"]}))
        print(json.dumps({"part": "zeroshot", "same_figures_every_epoch": same}))
        ratios["zeroshot_first_epoch_included"] = round(old_s / new_s, 2)
        if later_new:
            ratios["zeroshot_later_epochs"] = round(later_old / later_new, 1)
    print(json.dumps({"speedup_old_over_new_cpu": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
