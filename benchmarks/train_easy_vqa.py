"""easy-VQA benchmark: train fusion encoders on easy-VQA (the `easy-vqa` package) on this machine, report test accuracy.

    python benchmarks/train_easy_vqa.py                             # the shipped recipe: concat fusion, 6 epochs
    python benchmarks/train_easy_vqa.py --fusion cross_attention,co_attention,single_stream
    python benchmarks/train_easy_vqa.py --save-builtin              # refresh the built-in 'easy-vqa' model

Writes the data as QA JSONL files (DATA/train.jsonl, DATA/test.jsonl, images copied beside them), then per fusion
trains with `polymodal.train.vqa.train_vqa` (10% of the training images split off for validation and early stopping;
the test set is never used for choices) and prints one JSON line: test accuracy overall and per answer type, the time
spent caching tower features and training. A last line names the fusion with the best validation accuracy;
--save-builtin copies that model to polymodal/resources/models/easy-vqa. Published simple baselines reach ~0.876.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

BUILTIN = ROOT / "polymodal" / "resources" / "models" / "easy-vqa"


def write_easy_vqa(folder: Path, max_train_images: int | None = None, max_test_images: int | None = None) -> dict:
    """easy-VQA as DATA/{train,test}.jsonl + DATA/{train,test}/<id>.png; returns row counts."""
    try:
        from easy_vqa import get_test_image_paths, get_test_questions, get_train_image_paths, get_train_questions
    except ImportError as exc:
        raise SystemExit("this benchmark needs the easy-vqa package: pip install easy-vqa") from exc
    counts = {}
    for split, questions, paths, limit in (
        ("train", get_train_questions(), get_train_image_paths(), max_train_images),
        ("test", get_test_questions(), get_test_image_paths(), max_test_images),
    ):
        (folder / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for question, answer, image_id in zip(*questions):
            if limit is not None and image_id >= limit:
                continue
            target = folder / split / f"{image_id}.png"
            if not target.exists():
                shutil.copyfile(paths[image_id], target)
            lines.append(json.dumps({"image": f"{split}/{image_id}.png", "question": question, "answer": answer}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        counts[split] = len(lines)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder for the JSONL files and images (default: a temporary folder)")
    p.add_argument("--out", help="run folders go here, one per fusion (default: a temporary folder)")
    p.add_argument("--fusion", default="concat", help="comma-separated fusion names (default: the shipped one)")
    p.add_argument("--fusion-options", default="{}", help='JSON options for the fusion, e.g. \'{"layers": 2}\'')
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--pixel-patches", action="store_true", help="add the raw-pixel patch embedding to grid tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, help="use only the first N training images (quick runs)")
    p.add_argument("--test-images", type=int, help="use only the first N test images")
    p.add_argument("--save-builtin", action="store_true", help=f"copy the best model to {BUILTIN.relative_to(ROOT)}")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    announce(__file__)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    from polymodal.eval.vqa import read_qa, vqa_accuracy
    from polymodal.models.fusion_encoder import load_fusion_encoder
    from polymodal.train.vqa import VQARecipe, train_vqa

    data = Path(args.data or tempfile.mkdtemp(prefix="easy-vqa-"))
    out = Path(args.out or tempfile.mkdtemp(prefix="easy-vqa-runs-"))
    t0 = time.perf_counter()
    counts = write_easy_vqa(data, args.train_images, args.test_images)
    print(json.dumps({"data": str(data), "train_questions": counts["train"], "test_questions": counts["test"],
                      "write_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    test_rows = read_qa(data / "test.jsonl")

    results = []
    for fusion in [f.strip() for f in args.fusion.split(",") if f.strip()]:
        recipe = VQARecipe.from_dict({
            "qa": str(data / "train.jsonl"), "out": str(out / fusion), "batch_size": args.batch_size,
            "epochs": args.epochs, "lr": args.lr, "patience": args.patience, "seed": args.seed,
            "arch": {"name": "easy-vqa", "fusion": fusion, "fusion_options": json.loads(args.fusion_options),
                     "dim": args.dim, "pixel_patches": args.pixel_patches},
        })
        best = train_vqa(recipe, progress=False, overwrite=True)  # a rerun replaces its own earlier runs
        model = load_fusion_encoder(out / fusion / "model")
        t_eval = time.perf_counter()
        test = vqa_accuracy(model, test_rows)
        result = {
            "fusion": fusion, "fusion_options": model.config.fusion_options, "dim": args.dim,
            "pixel_patches": args.pixel_patches, "test_accuracy": round(test["accuracy"], 4),
            "test_per_type": {k: round(v, 4) for k, v in test["per_type"].items()},
            "val_accuracy": round(best.get("val/accuracy", float("nan")), 4), "best_epoch": best.get("epoch"),
            "epochs_run": best["epochs_run"], "cache_seconds": round(best["cache_seconds"], 1),
            "train_seconds": round(best["train_seconds"], 1),
            "total_seconds": round(best["cache_seconds"] + best["train_seconds"], 1),
            "eval_seconds": round(time.perf_counter() - t_eval, 1),
            "model_bytes": sum(f.stat().st_size for f in (out / fusion / "model").iterdir()),
            "model": str(out / fusion / "model"),
        }
        results.append(result)
        print(json.dumps(result), flush=True)

    winner = max(results, key=lambda r: r["val_accuracy"])
    print(json.dumps({"best_fusion": winner["fusion"], "test_accuracy": winner["test_accuracy"],
                      "chosen_by": "validation accuracy"}), flush=True)
    if args.save_builtin:
        tmp = BUILTIN.with_name(BUILTIN.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(winner["model"], tmp)
        config = json.loads((tmp / "config.json").read_text())  # trained as out/FUSION, it is named after that run
        (tmp / "config.json").write_text(json.dumps(config | {"name": "easy-vqa"}, indent=2))
        shutil.rmtree(BUILTIN, ignore_errors=True)
        tmp.rename(BUILTIN)
        print(json.dumps({"saved_builtin": str(BUILTIN)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
