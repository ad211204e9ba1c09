"""Does a quantized text graph give a caption the same vector alone as inside a batch, and what does it cost?

    python benchmarks/int8_batch_dependence.py [--pairs ../shared/data/flickr8k-dev/pairs.jsonl] [--texts 512]

Exports `lite`'s text tower (fp32) into a temporary folder, quantizes it as `export onnx` does (int8 dynamic) and,
when `onnx-ir` is installed, weight-only int8 (onnxruntime's MatMulNBits, int8 compute: accuracy_level 4). One JSON
line per graph: ms per text alone and in batches of 32 (the same run, turns interleaved: compare ratios), cosine to
fp32 (mean, min), and the smallest cosine between a text embedded alone and inside its batch. int8 dynamic
quantizes activations with one scale per batch, so its vectors depend on the batch; the others do not.
Without --pairs it uses the built-in sample captions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run_context.py (tests load scripts by path)
from run_context import announce  # noqa: E402

import numpy as np


def _texts(pairs: str | None, limit: int) -> list[str]:
    if pairs is None:
        from polymodal.export.onnx_export import validation_set

        return list(validation_set(None).captions)[:limit]
    rows = [json.loads(line) for line in Path(pairs).read_text().splitlines() if line.strip()]
    return [r["caption"] for r in rows][:limit]


def _weight_only_int8(fp32: Path, out: Path) -> bool:
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnxruntime's quantizer needs onnx-ir, not a polymodal dependency
        print(json.dumps({"graph": "int8_weight_only", "skipped": f"{exc} (pip install onnx-ir)"}))
        return False
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", help="JSONL pairs whose captions are embedded (default: the built-in sample)")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    announce(__file__, onnx_threads=args.threads)

    import polymodal
    from polymodal.export import variants as V
    from polymodal.export.onnx_export import export_onnx, validation_set
    from polymodal.export.runtime import OnnxEmbeddingModel

    if args.pairs and not Path(args.pairs).is_file():
        print(f"no pairs file at {args.pairs}; pass --pairs", file=sys.stderr)
        return 2
    texts = _texts(args.pairs, args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "lite"
        export_onnx(polymodal.load("lite"), folder, validation_set(None), variants=[], timing_seconds=0.05)
        fp32 = folder / "text.fp32.onnx"
        graphs = {"fp32": fp32, "int8_dynamic": V.int8_dynamic(fp32, folder / "text.int8_dynamic.onnx")}
        if _weight_only_int8(fp32, folder / "text.int8_weight_only.onnx"):
            graphs["int8_weight_only"] = folder / "text.int8_weight_only.onnx"
        config = json.loads((folder / "onnx_config.json").read_text())
        models, ref = {}, None
        for name, path in graphs.items():
            config["text"]["file"] = path.name
            (folder / "onnx_config.json").write_text(json.dumps(config))
            models[name] = OnnxEmbeddingModel(folder, threads=args.threads)
        timing = {name: [0.0, 0.0] for name in models}
        for _ in range(2):  # interleaved turns: load that comes and goes hits every graph alike
            for name, m in models.items():
                start = time.perf_counter()
                for t in texts[:128]:
                    m.embed_texts([t])
                alone = (time.perf_counter() - start) / min(128, len(texts))
                start = time.perf_counter()
                for i in range(0, len(texts), 32):
                    m.embed_texts(texts[i:i + 32])
                batched = (time.perf_counter() - start) / len(texts)
                timing[name] = [min(x, y) if x else y for x, y in zip(timing[name], (alone, batched))]
        for name, m in models.items():
            alone = np.concatenate([m.embed_texts([t]) for t in texts])
            batched = np.concatenate([m.embed_texts(texts[i:i + 32]) for i in range(0, len(texts), 32)])
            ref = alone if ref is None else ref
            to_fp32 = (alone * ref).sum(1)
            print(json.dumps({"graph": name, "texts": len(texts), "ms_per_text_alone": round(1000 * timing[name][0], 2),
                              "ms_per_text_batch32": round(1000 * timing[name][1], 2),
                              "x_fp32_batch32": round(timing["fp32"][1] / timing[name][1], 2),
                              "cosine_to_fp32_mean": round(float(to_fp32.mean()), 5),
                              "cosine_to_fp32_min": round(float(to_fp32.min()), 5),
                              "alone_vs_batch_min_cosine": round(float((alone * batched).sum(1).min()), 6)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
