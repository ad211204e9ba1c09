"""`polymodal export onnx MODEL [--out DIR] [--val-pairs FILE]`: ONNX graphs, parity, gated variants, report."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from polymodal.cache import staged_folder
from polymodal.errors import PolymodalError
from polymodal.export.out_folder import check_out_folder
from polymodal.training_photos import copy_training_records


def cmd_export_onnx(args) -> int:
    # the options are checked before onnx, onnxruntime and torch load (3-9 s on a busy 2-core machine): a missing
    # --out was answered only after them
    from polymodal.export.runtime import is_onnx_folder
    from polymodal.registry import MODELS, NO_ONNX, check_model_name, onnx_export_dir

    if args.model in NO_ONNX:  # before reading --val-qa or loading it: "not a VQA model" would be wrong advice
        raise PolymodalError(f"{args.model} has no ONNX form ({NO_ONNX[args.model]}); run it with the PyTorch "
                             "runtime (the default)")
    check_model_name(args.model)  # before other advice ("pass --out")
    if args.model not in MODELS and is_onnx_folder(Path(args.model).expanduser()):
        made_from = _exported_from(Path(args.model).expanduser())
        raise PolymodalError(f"{args.model} is already an ONNX export{made_from}; use it as it "
                             f"is (--model {args.model}, polymodal.load({args.model!r})), or export the model "
                             "folder it was made from")
    if args.val_limit < 2:
        raise PolymodalError(f"--val-limit must be at least 2, got {args.val_limit}")
    if not 0 < args.timing_seconds < float("inf"):  # also refuses nan; inf would time the first graph forever
        raise PolymodalError(f"--timing-seconds must be more than 0 and finite, got {args.timing_seconds}")
    out = Path(args.out) if args.out else (onnx_export_dir(args.model) if args.model in MODELS else None)
    if out is None:
        raise PolymodalError("pass --out DIR: where to write the export of a model given by path")
    # refused before the model loads: a file, another folder's files (the export replaces the whole folder), or a
    # parent that cannot be written (the export is built beside it)
    check_out_folder(out, f"--out {out}")
    if not args.max_drop_points >= 0:  # nan: every variant would be "over the nan-point limit"
        raise PolymodalError(f"--max-drop-points must be 0 or more, got {args.max_drop_points}")
    variants = _variants(args)
    if args.val_qa and args.val_pairs:  # one checks a VQA export, the other an embedding or captioner export
        raise PolymodalError("pass --val-qa (questions, for a VQA model) or --val-pairs (photos with captions, for an "
                             "embedding model or a captioner), not both")
    for extra in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(extra)
        except ImportError as exc:
            raise PolymodalError(f"ONNX export needs the onnx extra ({exc.name} is missing); pip install "
                                 "'polymodal[onnx]'") from exc
    import polymodal
    from polymodal.export.onnx_export import export_onnx, report_table, validation_set, warn_if_the_gate_is_coarse

    if args.val_qa:
        return _export_vqa(args, out)
    val = validation_set(args.val_pairs, limit=args.val_limit, warn_few=False)  # (read before the model loads)
    model = polymodal.load(args.model)
    if callable(getattr(model, "caption", None)):
        return _export_captioner(args, model, val, out, variants)  # (its gate, CIDEr-D, says when it has too few)
    if hasattr(model, "vqa_logits"):
        raise PolymodalError(f"{args.model} is a VQA model: pass --val-qa FILE.jsonl (questions to check the export on)")
    if args.val_pairs:
        warn_if_the_gate_is_coarse(len(val.images))

    def progress(message: str) -> None:
        if not args.json:
            print(f"polymodal: {message}", file=sys.stderr, flush=True)

    kwargs = {"keep_unserved": args.keep_unserved, **({} if variants is None else {"variants": variants})}
    with staged_folder(out) as stage:
        report = export_onnx(model, stage, val, max_drop_points=args.max_drop_points, progress=progress,
                             timing_seconds=args.timing_seconds, **kwargs)
        copy_training_records(args.model, stage)  # `eval --model OUT` warns of its photos, `info` says how it trained
    from polymodal.registry import MODELS, onnx_export_dir

    # a built-in name exported to its default folder is found by name
    by_name = args.model in MODELS and out == onnx_export_dir(args.model)
    # an export folder as --model runs through onnxruntime by itself (--runtime auto); a name needs the flag
    use = f"--runtime onnx --model {args.model}" if by_name else f"--model {out}"
    return _print_result(args, out, report, report_table(report),
                         f"{use} on index, search, classify and eval, e.g. `polymodal serve --db INDEX {use}`",
                         load=f"polymodal.load({args.model!r}, runtime='onnx')" if by_name else None)


def _variants(args) -> list[str] | None:
    """--variants as a list (None = all); unknown names are an error."""
    from polymodal.export.variants import VARIANTS

    if args.variants is None:
        return None
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise PolymodalError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def _export_vqa(args, out: Path) -> int:
    import random

    import polymodal
    from polymodal.eval.vqa import read_qa
    from polymodal.export.fusion_export import check_vqa_variants, export_fusion_onnx, vqa_report_table

    check_vqa_variants(_variants(args))
    rows = read_qa(args.val_qa)
    rows = random.Random(0).sample(rows, min(args.val_limit, len(rows)))
    model = polymodal.load(args.model)
    if not hasattr(model, "vqa_logits"):
        raise PolymodalError(f"{args.model} does not answer questions through a fusion encoder; --val-qa is for "
                             "VQA models such as easy-vqa (embedding models take --val-pairs)")
    with staged_folder(out) as stage:
        report = export_fusion_onnx(model, stage, rows, progress=lambda m: None if args.json else
                                    print(f"polymodal: {m}", file=sys.stderr, flush=True),
                                    max_drop_points=args.max_drop_points, timing_seconds=args.timing_seconds,
                                    variants=_variants(args), keep_unserved=args.keep_unserved)
        copy_training_records(args.model, stage)  # `eval --model OUT` warns of its photos, `info` says how it trained
    return _print_result(args, out, report, vqa_report_table(report),
                         f"`polymodal vqa IMAGE QUESTION --model {out}`")


def _export_captioner(args, model, val, out: Path, variants) -> int:
    from polymodal.export.caption_export import caption_report_table, check_caption_variants, export_captioner_onnx

    check_caption_variants(variants)
    references = [[c for c, i in zip(val.captions, val.caption_image) if i == k] for k in range(len(val.images))]
    with staged_folder(out) as stage:
        report = export_captioner_onnx(model, stage, val.images, references, variants=variants,
                                       keep_unserved=args.keep_unserved,
                                       max_drop_points=args.max_drop_points, timing_seconds=args.timing_seconds,
                                       progress=lambda m: None if args.json else
                                       print(f"polymodal: {m}", file=sys.stderr, flush=True))
        copy_training_records(args.model, stage)  # `eval --model OUT` warns of its photos, `info` says how it trained
    return _print_result(args, out, report, caption_report_table(report),
                         f"`polymodal caption IMAGE --model {out}`")


def _print_result(args, out: Path, report: dict, table: str, command: str, load: str | None = None) -> int:
    """One JSON line with --json; otherwise the report table and how to use the export (`load`: the Python call,
    default polymodal.load(OUT), which picks onnxruntime for an export folder)."""
    if args.json:
        print(json.dumps({"out": str(out), **report}))
    else:
        print(table)
        print(f"written to {out}; use it with {load or f'polymodal.load({str(out)!r})'} or {command}")
    return 0


def _exported_from(folder: Path) -> str:
    """" (of MODEL_KEY)" from an export's report.json, or "" when it cannot be read."""
    try:
        return f" (of {json.loads((folder / 'report.json').read_text())['model']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def add_parsers(sub) -> None:
    export = sub.add_parser("export", help="export a model for deployment").add_subparsers(dest="format", required=True)
    s = export.add_parser("onnx", help="ONNX graphs of a model (embedding towers, VQA, captioner), parity-checked; "
                                       "int8/bf16 variants kept only if faster and within --max-drop-points "
                                       "(needs [onnx])")
    s.add_argument("model", help="built-in name or model folder/checkpoint")
    s.add_argument("--out", help="export folder (default for built-in names: the cache's onnx/NAME, where "
                                 "polymodal.load(NAME, runtime='onnx') looks)")
    s.add_argument("--val-pairs", help="image-caption pairs for parity and the accuracy gate "
                                                  "(default: the built-in sample photos, a coarse gate)")
    s.add_argument("--val-qa", help="VQA models: question rows (JSONL) the export is checked on")
    s.add_argument("--val-limit", type=int, default=300,
                   help="validation images sampled from --val-pairs, or questions from --val-qa (default 300)")
    s.add_argument("--variants",
                   help="comma-separated subset of int8_dynamic,int8_static,bf16 (default: all the model's kind "
                        "has; '' = none; captioners: int8_dynamic)")
    s.add_argument("--max-drop-points", type=float, default=1.0,
                   help="largest quality drop in points a kept variant may cost: R@5 for embedding models, "
                        "accuracy for VQA, CIDEr-D x100 for captioners (default 1)")
    s.add_argument("--timing-seconds", type=float, default=1.0, help="length of each speed measurement (default 1)")
    s.add_argument("--keep-unserved", action="store_true",
                   help="keep the graphs tried but not served (by default deleted: e.g. the fp32 graph a kept int8 "
                        "variant replaces, ~90 MB for MiniLM)")
    s.add_argument("--json", action="store_true", help="print the report as one JSON object, no progress lines")
    s.set_defaults(func=cmd_export_onnx)
