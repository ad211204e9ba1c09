"""Every fusion module on easy-VQA and on the real COCO yes/no set: accuracy, parameters, training time, inference cost.

    python benchmarks/fusion_compare.py --markdown fusion_compare.md > fusion_compare.jsonl
    python benchmarks/fusion_compare.py --datasets easy-vqa --fusions concat,cross_attention --epochs 3
    python benchmarks/fusion_compare.py --epochs easy-vqa=2,coco-yesno=6   # epochs per dataset
    python benchmarks/fusion_compare.py --quick                        # a tiny subset, 1 epoch: a smoke run

Each fusion is trained as a FusionEncoder (frozen EfficientNet-Lite0 7x7 grid tokens + MiniLM question tokens,
trainable projections + fusion + VQA head) with the recipe of the shipped easy-vqa model (benchmarks/train_easy_vqa.py:
dim 128, lr 2e-3, batch 256, 6 epochs, patience 4, seed 0, 10% of the training images split off for validation and
early stopping); only the fusion changes. The tower pass runs once per dataset: its features are cached on disk
before the first fusion trains, and every fusion reads the same cache (its time is reported once, on the dataset's
line, and is not in any fusion's training seconds).

Datasets:
  easy-vqa    the easy-vqa package's train split (train + validation) and its official test split
  coco-yesno  ../shared/data/vqa-coco-yesno-train/qa.jsonl (2,248 yes/no questions on 1,500 COCO photos), split by
              image (seed 0): 80% train (+ validation from it), 20% held-out test; nothing is copied into the repo

stdout gets JSON lines:
  {"context": ...}          first: polymodal version and commit, torch, threads, CPU, date (benchmarks/run_context.py)
  {"kind": "dataset", ...}  per dataset: split sizes, the majority-answer baseline on its test split, the tower
                            caching seconds and the tower cost per sample (image tower ms/image incl. decoding and
                            resizing, text tower ms/question) -- the towers dominate end-to-end inference
  {"kind": "fusion", ...}   per (dataset, fusion): test accuracy (and per answer type), best validation accuracy,
                            trainable parameters (whole trainable model, and the fusion module alone), training
                            seconds, epochs run, inference ms per sample (projections + fusion + head on cached
                            features, batch 256)
  {"kind": "summary", ...}  settings, threads, elapsed time
progress and logs go to stderr. --markdown PATH writes one table per dataset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# idle OpenMP threads sleep unless the caller chose (ACTIVE on a quiet machine): spinning beside other jobs
# made speed ratios swing by several times (benchmarks/omp_wait_policy.py); OpenMP reads it when torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # run_context.py (tests load scripts by path)
from run_context import SHARED_DATA, announce  # noqa: E402

log = logging.getLogger("fusion_compare")

DATASETS = ("easy-vqa", "coco-yesno")
COCO_YESNO = SHARED_DATA / "vqa-coco-yesno-train" / "qa.jsonl"
# the shipped easy-vqa model's recipe (benchmarks/train_easy_vqa.py defaults)
# warmup_steps: the VQA recipe's fixed 30 steps when the README's table was measured (its default is now 30 but at
# most half the run, which on coco-yesno's 48 steps would be 24)
RECIPE = {"dim": 128, "lr": 2e-3, "batch_size": 256, "epochs": 6, "patience": 4, "val_fraction": 0.1,
          "warmup_steps": 30}
QUICK = {"easy_train_images": 40, "easy_test_images": 15, "coco_images": 60, "epochs": 1}
INFER_BATCH = 256


@dataclass
class Prepared:
    name: str
    title: str
    fit: Path  # training rows
    val: Path  # validation rows (early stopping, model choice)
    test: Path  # held-out rows (reported only)
    note: str


# -- data -----------------------------------------------------------------------------------------------------------


def _easy_vqa_module():
    spec = importlib.util.spec_from_file_location("_easy_vqa_benchmark", HERE / "train_easy_vqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_rows(path: Path, rows) -> Path:
    """QA rows -> JSONL with absolute image paths (read_qa resolves an absolute path to itself)."""
    with path.open("w") as f:
        for r in rows:
            item = {"image": str(r.image), "question": r.question, "answer": r.answer}
            if r.answer_type:
                item["answer_type"] = r.answer_type
            f.write(json.dumps(item) + "\n")
    return path


def prepare_easy_vqa(root: Path, quick: bool, seed: int) -> Prepared:
    from polymodal.eval.vqa import read_qa
    from polymodal.train.vqa import split_by_image

    limits = (QUICK["easy_train_images"], QUICK["easy_test_images"]) if quick else (None, None)
    folder = root / ("easy-vqa-quick" if quick else "easy-vqa")
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _easy_vqa_module().write_easy_vqa(folder, *limits)  # existing image copies are kept (the feature cache stays valid)
    fit, val = split_by_image(read_qa(folder / "train.jsonl"), RECIPE["val_fraction"], seed)
    log.info("easy-VQA written to %s in %.1f s", folder, time.perf_counter() - t0)
    return Prepared("easy-vqa", "easy-VQA", _write_rows(folder / "fit.jsonl", fit),
                    _write_rows(folder / "val.jsonl", val), folder / "test.jsonl", "official test split")


def prepare_coco_yesno(root: Path, source: Path, quick: bool, seed: int, test_fraction: float) -> Prepared:
    from polymodal.eval.vqa import read_qa
    from polymodal.train.vqa import split_by_image

    rows = read_qa(source)
    if quick:
        keep = set(sorted({str(r.image) for r in rows})[: QUICK["coco_images"]])
        rows = [r for r in rows if str(r.image) in keep]
    train, test = split_by_image(rows, test_fraction, seed)
    fit, val = split_by_image(train, RECIPE["val_fraction"], seed)
    folder = root / ("coco-yesno-quick" if quick else "coco-yesno")
    folder.mkdir(parents=True, exist_ok=True)
    return Prepared("coco-yesno", "COCO yes/no", _write_rows(folder / "fit.jsonl", fit),
                    _write_rows(folder / "val.jsonl", val), _write_rows(folder / "test.jsonl", test),
                    f"held-out {test_fraction:.0%} of the images, split seed {seed}")


# -- measurements ---------------------------------------------------------------------------------------------------


def _best_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timed calls (after ``warmup`` untimed ones): on a shared CPU the minimum is the
    least disturbed estimate of the cost itself."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _encoded(path: Path):
    from polymodal.eval.vqa import read_qa
    from polymodal.train.vqa import EncodedQA

    return EncodedQA.from_rows(read_qa(path))


def cache_towers(data: Prepared, arch: dict, progress: bool, quick: bool) -> dict:
    """Run the towers over every split once (the on-disk feature cache every fusion then reads, keyed exactly as
    train_vqa / vqa_accuracy key it) and time the towers per sample."""
    import torch

    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
    from polymodal.train.vqa import grid_features, question_features

    t0 = time.perf_counter()
    model = FusionEncoder(FusionEncoderConfig(**{**arch, "fusion": "concat", "answers": ["yes", "no"]})).eval()
    t_model = time.perf_counter()
    images = questions = 0
    for split in (data.fit, data.val, data.test):
        enc = _encoded(split)
        grid_features(model, enc.images, progress=progress)
        question_features(model, enc.questions, progress=progress)
        images, questions = images + len(enc.images), questions + len(enc.questions)
    t_cached = time.perf_counter()

    test = _encoded(data.test)  # towers per sample, measured apart from the cache (which may have been warm)
    sample_images = test.images[: 16 if quick else 64]
    sample_questions = test.questions[:INFER_BATCH]

    def image_pass():
        for i in range(0, len(sample_images), 32):
            model.image_cache_input(torch.from_numpy(model.transform(sample_images[i : i + 32])))

    with torch.inference_mode():
        model.image_cache_input(torch.from_numpy(model.transform(sample_images[:2])))  # warm-up
        image_s = _best_seconds(image_pass, repeats=1, warmup=0)
        text_s = _best_seconds(lambda: model.text_cache_input(sample_questions), repeats=1 if quick else 3)
    image_ms = 1000 * image_s / len(sample_images)
    text_ms = 1000 * text_s / len(sample_questions)
    return {"cache_seconds": round(t_cached - t_model, 1), "tower_load_seconds": round(t_model - t0, 1),
            "cached_images": images, "cached_questions": questions,
            "image_tower_ms_per_image": round(image_ms, 2), "text_tower_ms_per_question": round(text_ms, 2),
            "tower_ms_per_sample": round(image_ms + text_ms, 2), "tower_timing_samples": [len(sample_images),
                                                                                            len(sample_questions)]}


def inference_ms(model, test, quick: bool) -> float:
    """Projections + fusion + VQA head on cached features: ms per (image, question) sample at batch 256."""
    import numpy as np
    import torch

    from polymodal.train.vqa import grid_features, question_features

    feats = grid_features(model, test.images, progress=False)  # cache hits
    states, lengths = question_features(model, test.questions, progress=False)
    n = INFER_BATCH
    idx = np.arange(n) % len(test.rows)  # a small test split is cycled to fill the batch
    q = test.row_question[idx]
    width = max(1, int(lengths[q].max()))
    images = torch.from_numpy(np.asarray(feats[test.row_image[idx]], dtype=np.float32))  # one image per row
    text = torch.from_numpy(np.asarray(states[q, :width], dtype=np.float32))
    mask = torch.arange(width)[None, :] < torch.from_numpy(np.asarray(lengths[q], dtype=np.int64))[:, None]
    model.eval()
    with torch.inference_mode():
        seconds = _best_seconds(lambda: model.vqa_logits(images, text, mask), repeats=2 if quick else 7,
                                  warmup=1 if quick else 2)
    return 1000 * seconds / n


def majority_baseline(data: Prepared) -> dict:
    from collections import Counter

    from polymodal.eval.vqa import read_qa

    train = read_qa([data.fit, data.val])
    test = read_qa(data.test)
    answer, _ = Counter(r.answer for r in train).most_common(1)[0]
    hits = sum(r.answer == answer for r in test)
    return {"majority_answer": answer, "majority_test_accuracy": round(hits / len(test), 4)}


def run_fusion(data: Prepared, fusion: str, arch: dict, epochs: int, args, out: Path, progress: bool) -> dict:
    from polymodal.eval.vqa import read_qa, vqa_accuracy
    from polymodal.models.fusion_encoder import load_fusion_encoder
    from polymodal.train.vqa import VQARecipe, train_vqa

    run = out / data.name / fusion
    recipe = VQARecipe.from_dict({
        "qa": str(data.fit), "val_qa": str(data.val), "out": str(run), "batch_size": RECIPE["batch_size"],
        "epochs": epochs, "lr": RECIPE["lr"], "patience": RECIPE["patience"], "seed": args.seed,
        "warmup_steps": RECIPE["warmup_steps"], "arch": {**arch, "name": f"{data.name}-{fusion}", "fusion": fusion},
    })
    best = train_vqa(recipe, progress=progress, overwrite=True)  # a rerun replaces its own earlier runs
    model = load_fusion_encoder(run / "model")
    test = vqa_accuracy(model, read_qa(data.test))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fusion_params = sum(p.numel() for p in model.fusion.parameters() if p.requires_grad)
    return {
        "kind": "fusion", "dataset": data.name, "fusion": fusion, "fusion_options": model.config.fusion_options,
        "test_accuracy": round(test["accuracy"], 4),
        "test_per_type": {k: round(v, 4) for k, v in test["per_type"].items()}, "test_questions": test["count"],
        "val_accuracy": round(best.get("val/accuracy", float("nan")), 4), "best_epoch": best.get("epoch"),
        "epochs": epochs, "epochs_run": best.get("epochs_run"), "params": trainable, "fusion_params": fusion_params,
        "train_seconds": round(best["train_seconds"], 1),
        # train_vqa's own cache phase (tower load + reading the warm cache): ~seconds when the cache is shared
        "feature_load_seconds": round(best["cache_seconds"], 1),
        "inference_ms_per_sample": round(inference_ms(model, _encoded(data.test), args.quick), 4),
        "inference_batch": INFER_BATCH, "answers": len(model.answers),
    }


# -- markdown -------------------------------------------------------------------------------------------------------


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def markdown(datasets: list[dict], fusions: list[dict], summary: dict) -> str:
    lines = [
        "Fusion modules compared (`benchmarks/fusion_compare.py`): frozen EfficientNet-Lite0 7x7 grid tokens + MiniLM "
        "question tokens, trainable projections + fusion + VQA head, the shipped easy-vqa recipe "
        f"(dim {summary['dim']}, lr {summary['lr']}, batch {summary['batch_size']}, patience {summary['patience']}, "
        f"seed {summary['seed']}, best epoch by validation accuracy). "
        f"CPU, {summary['torch_threads']} torch threads"
        + (f"; {summary['note']}" if summary.get("note") else "") + ".",
        "",
    ]
    for d in datasets:
        rows = [f for f in fusions if f["dataset"] == d["dataset"]]
        lines += [
            f"**{d['title']}** ({d['test_note']}: {d['test_questions']:,} questions on {d['test_images']:,} images; "
            f"trained on {d['fit_questions']:,} questions / {d['fit_images']:,} images, "
            f"{d['val_questions']:,} / {d['val_images']:,} for validation; {d['epochs']} epochs per fusion). "
            f"Majority answer ('{d['majority_answer']}'): {d['majority_test_accuracy']:.3f}. "
            f"Tower feature caching, once for all fusions: {d['cache_seconds']:.0f} s for "
            f"{d['cached_images']:,} images and {d['cached_questions']:,} questions; towers per sample: "
            f"{d['image_tower_ms_per_image']:.1f} ms image (incl. decoding) + "
            f"{d['text_tower_ms_per_question']:.2f} ms question.",
            "",
            "| fusion | test acc | val acc | trainable params (fusion) | epochs (best) | train s "
            "| proj+fusion+head ms/sample |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for f in rows:
            lines.append(
                f"| {f['fusion']} | {f['test_accuracy']:.4f} | {f['val_accuracy']:.4f} | {_fmt_params(f['params'])} "
                f"({_fmt_params(f['fusion_params'])}) | {f['epochs_run']} ({f['best_epoch']}) | "
                f"{f['train_seconds']:.0f} | "
                f"{f['inference_ms_per_sample']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------------------


def _names(text: str, allowed, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return names


def _epochs(text: str | None, datasets: list[str], default: int) -> dict[str, int]:
    """'3' -> every dataset 3 epochs; 'easy-vqa=2,coco-yesno=6' -> per dataset (unnamed ones get the default)."""
    out = dict.fromkeys(datasets, default)
    try:
        if text and "=" not in text:
            out = dict.fromkeys(datasets, int(text))
        elif text:
            for part in filter(None, (x.strip() for x in text.split(","))):
                name, n = (x.strip() for x in part.split("=", 1))
                _names(name, DATASETS, "dataset")
                out[name] = int(n)
    except ValueError:
        raise SystemExit(f"--epochs takes N or DATASET=N,...; got {text!r}") from None
    if any(n < 1 for n in out.values()):
        raise SystemExit(f"--epochs must be at least 1; got {text!r}")
    return {d: out[d] for d in datasets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: easy-vqa, coco-yesno")
    p.add_argument("--fusions", default="all", help="comma-separated fusion names (default: all)")
    p.add_argument("--epochs", help=f"epochs per fusion: N, or per dataset 'easy-vqa=2,coco-yesno=6' (default "
                                    f"{RECIPE['epochs']}, with --quick {QUICK['epochs']})")
    p.add_argument("--quick", action="store_true", help="a tiny subset of each dataset (smoke run)")
    p.add_argument("--markdown", help="write the tables as Markdown to this file")
    p.add_argument("--coco-yesno", default=str(COCO_YESNO), help="the yes/no QA JSONL (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="coco-yesno: held-out share of the images")
    p.add_argument("--data-dir", help="prepared data go here (default: <tmp>/polymodal-fusion-compare; "
                                      "reusing it keeps the feature cache warm)")
    p.add_argument("--out", help="run folders, one per (dataset, fusion) (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", help="a remark for the Markdown header (e.g. CPU contention)")
    p.add_argument("--verbose", action="store_true", help="per-epoch training bars and debug logs")
    p.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    args = p.parse_args(argv)
    announce(__file__)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch
    from tqdm.auto import tqdm

    from polymodal.fusion import FUSIONS

    datasets = _names(args.datasets, DATASETS, "dataset")
    if "coco-yesno" in datasets and not Path(args.coco_yesno).expanduser().is_file():  # ~ as read_qa reads it
        # said before any fusion trains: found missing after easy-VQA's runs, it ended them in a traceback
        print(f"error: coco-yesno needs {args.coco_yesno} (see ../shared/data/README.md); pass --coco-yesno FILE "
              "or --datasets easy-vqa", file=sys.stderr)
        return 2
    epochs = _epochs(args.epochs, datasets, QUICK["epochs"] if args.quick else RECIPE["epochs"])
    fusions = list(FUSIONS) if args.fusions == "all" else _names(args.fusions, list(FUSIONS), "fusion")
    data_root = Path(args.data_dir or Path(tempfile.gettempdir()) / "polymodal-fusion-compare")
    out = Path(args.out or tempfile.mkdtemp(prefix="fusion-compare-runs-"))
    arch = {"dim": RECIPE["dim"]}
    show = not args.quiet
    t_start = time.perf_counter()

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    dataset_lines, fusion_lines = [], []
    bar = tqdm(total=len(datasets) * len(fusions), desc="fusions", unit="run", disable=not show, file=sys.stderr)
    for name in datasets:
        if name == "easy-vqa":
            data = prepare_easy_vqa(data_root, args.quick, args.seed)
        else:
            data = prepare_coco_yesno(data_root, Path(args.coco_yesno), args.quick, args.seed, args.test_fraction)
        sizes = {}
        for split, path in (("fit", data.fit), ("val", data.val), ("test", data.test)):
            enc = _encoded(path)
            sizes[f"{split}_questions"], sizes[f"{split}_images"] = len(enc.rows), len(enc.images)
        log.info("%s: caching tower features", data.title)
        towers = cache_towers(data, arch, progress=show, quick=args.quick)
        record = {"kind": "dataset", "dataset": data.name, "title": data.title, "test_note": data.note,
                  "epochs": epochs[name], **sizes,
                  **majority_baseline(data), **towers}
        dataset_lines.append(record)
        emit(record)
        for fusion in fusions:
            bar.set_postfix_str(f"{data.name}/{fusion}")
            result = run_fusion(data, fusion, arch, epochs[name], args, out, progress=args.verbose)
            fusion_lines.append(result)
            emit(result)
            log.info("%s %s: test %.4f (val %.4f), %d params, %.0f s training, %.3f ms/sample", data.name, fusion,
                     result["test_accuracy"], result["val_accuracy"], result["params"], result["train_seconds"],
                     result["inference_ms_per_sample"])
            if result["feature_load_seconds"] > 60:
                log.warning("%s %s: train_vqa spent %.0f s before training: the shared feature cache was missed",
                            data.name, fusion, result["feature_load_seconds"])
            bar.update(1)
    bar.close()

    summary = {"kind": "summary", **{k: v for k, v in RECIPE.items() if k != "epochs"}, "epochs": epochs,
               "seed": args.seed, "quick": args.quick, "datasets": datasets, "fusions": fusions,
               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "torch": torch.__version__, "note": args.note, "out": str(out),
               "elapsed_seconds": round(time.perf_counter() - t_start, 1)}
    emit(summary)
    if args.markdown:
        Path(args.markdown).write_text(markdown(dataset_lines, fusion_lines, summary))
        log.info("wrote %s", args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
