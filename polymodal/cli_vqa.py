"""`polymodal vqa`, `polymodal train vqa`, `polymodal eval vqa`: thin wrappers over the fusion encoder, train.vqa and
eval.vqa. `add_parsers(sub, actions)` takes the subcommand action and the "train"/"eval" sub-actions that
`polymodal.cli_train.add_parsers` returns."""

from __future__ import annotations

import json

from polymodal.cli_options import (
    CONFIG_HELP, FUSION_ARCH_FLAGS, TRAIN_LOOP_FLAGS, add_eval_options, add_precision, add_quiet, add_recipe_flags,
    add_run_options, add_runtime, how_it_ran,
)
from polymodal.errors import PolymodalError

# flag -> (recipe section, type): "train" = TrainConfig, "arch" = FusionEncoderConfig, "" = the recipe itself
VQA_HELPS = {
    "seed": "seed of the initial weights, the data order, dropout, the validation split and the wrong answers of "
            "the ITM rows (--itm-head) (default: %(recipe_default)s)",
    "fusion": "the fusion module joining grid and question tokens (python -c \"import polymodal.fusion as f; "
              "print(list(f.FUSIONS))\" lists them)",
    "batch_size": "questions per step (whole photos are packed, so about this many)",
    "min_answer_count": "answers seen fewer times in training are left out of the answer vocabulary",
    "max_answers": "the answer vocabulary keeps at most this many of the most frequent answers",
    "itm_weight": "weight of the image-text matching loss (true vs wrong answers; needs --itm-head); 0 = off",
    # not the shared help's "CSV column": question files are JSONL or Parquet (a CSV is refused as bad JSON)
    "split": "read only the rows whose \"split\" (JSON field or Parquet column) is one of these comma-separated names; "
             "unset: every row",
}
VQA_FLAGS = {
    **TRAIN_LOOP_FLAGS, **FUSION_ARCH_FLAGS,
    "batch_size": ("", int), "val_fraction": ("", float), "min_answer_count": ("", int), "max_answers": ("", int),
    "label_smoothing": ("", float), "itm_weight": ("", float), "workers": ("", int), "split": ("", str),
    "val_split": ("", str),
}


def _load_vqa_model(name: str, runtime: str = "auto", precision: str = "fp32"):
    import polymodal
    from polymodal.registry import require_vqa

    return require_vqa(polymodal.load(name, runtime=runtime, precision=precision), name)


def given_choices(args) -> list[str] | None:
    """--choices as a list (None when not given); one error for a list that names no answer, or one twice."""
    choices = None if args.choices is None else [c.strip() for c in args.choices.split(",") if c.strip()]
    if choices == []:  # `--choices ""` (an empty shell variable) would otherwise answer open-ended without a word
        raise PolymodalError(f"--choices {args.choices!r} names no answer; pass candidates like --choices yes,no, "
                             "or leave --choices out for an open answer")
    _check_distinct(choices or [], args.choices)
    return choices


def _check_distinct(choices: list[str], given: str) -> None:
    """One error for a candidate named twice (red,red; red,Red: answers compare so): it was scored once, silently,
    where a QA file row whose choices repeat is skipped with a reason. A typo for another candidate, most likely."""
    from polymodal.data.answers import comparable_answer

    first: dict[str, str] = {}
    for c in choices:
        key = comparable_answer(c)
        if key in first:
            raise PolymodalError(f"--choices {given!r} names one answer twice ({first[key]}, {c}); pass each "
                                 "candidate once")
        first[key] = c


def cmd_vqa(args) -> int:
    from polymodal.data.images import check_image_file
    from polymodal.models.inputs import one_question

    if args.qa:
        from polymodal.cli_vqa_batch import answer_questions_file

        return answer_questions_file(args)
    if args.out:
        raise PolymodalError("--out writes the answers of a questions file: pass it with --qa FILE (for one question, "
                             "--json prints the answer as JSON)")
    if args.image is None or args.question is None:
        raise PolymodalError("pass an image and a question (polymodal vqa photo.jpg \"what is this?\"), or a "
                             "questions file with --qa FILE")
    one_question(args.question)  # an empty question fails here, before the model loads
    if args.top_k < 1:
        raise PolymodalError(f"--top-k must be at least 1, got {args.top_k}")
    # a missing or unreadable image, or a heat map name of no image format, fails here, before the model loads
    check_image_file(args.image)
    if args.explain is not None:
        from polymodal.apps.explain import check_heatmap_path

        check_heatmap_path(args.explain, args.image)
    choices = given_choices(args)
    model = _load_vqa_model(args.model, args.runtime, args.precision)
    if args.explain and not (hasattr(model, "explain") and getattr(model, "draws_heat_maps", True)):  # before answering
        raise PolymodalError(f"--explain needs a model that draws heat maps (explain(): fusion encoders such as "
                             f"easy-vqa and `polymodal train vqa` models, and their ONNX exports; not coco-yesno, which "
                             f"scores the whole image); {args.model} has no explain(): drop --explain")
    # the path, not the decoded image: the model reads the file as evaluation and training do (see draft_size_of)
    from polymodal.serve.model_warnings import with_warnings

    # the warnings stay on stderr and are also in --json's "warnings", as /v1/vqa replies carry them
    result, warnings = with_warnings(lambda: model.answer(args.image, args.question, choices=choices, top_k=args.top_k))
    if args.explain:
        from polymodal.apps.explain import save_heatmap

        # the map of the answer printed (with --choices often not the open top answer a map would show by default)
        caption = (f"Q: {args.question}\nA: {result['answer']} (score {result['score']:.3f}), "
                   f"model {getattr(model, 'key', args.model)}")  # the PNG alone says what it explains
        save_heatmap(args.image, model.explain(args.image, args.question, answer=result["answer"]), args.explain,
                     transform=model.transform, caption=caption, method=getattr(model, "heat_map_method", None))
        result["explain"] = str(args.explain)
    if args.json:
        print(json.dumps({"model": getattr(model, "key", args.model), "image": args.image, "question": args.question,
                          "answer": result["answer"], "score": round(result["score"], 4),
                          "alternatives": [{"answer": a, "score": round(s, 4)} for a, s in result["alternatives"]],
                          "warnings": warnings, **({"explain": result["explain"]} if args.explain else {})}))
        return 0
    print(f"{result['answer']}  ({result['score']:.3f})")
    for a, s in result["alternatives"][1:]:
        print(f"  {a}  ({s:.3f})")
    if args.explain:
        print(f"heat map: {args.explain}")
    return 0


def cmd_train_vqa(args) -> int:
    from polymodal.cli_train import recipe_settings, run_recipe, with_run_settings
    from polymodal.train.vqa import VQARecipe, train_vqa

    settings = recipe_settings(args, ("qa", "val_qa", "out", "model"), VQA_FLAGS)
    if args.itm_head:
        settings["arch"]["itm_head"] = True
    if args.new_head:
        settings["new_head"] = True
    if args.freeze:
        settings["freeze"] = [p.strip() for p in args.freeze.split(",") if p.strip()]
    if args.resume:
        settings = with_run_settings(settings, VQARecipe, args.overwrite)
    if isinstance(settings["arch"].get("answers"), int):  # train_config.json keeps only their number (--resume, or
        del settings["arch"]["answers"]  # --config RUN/train_config.json): not --model's vocabulary to compare
    return run_recipe(args, settings, "qa", VQARecipe, train_vqa)


def cmd_eval_vqa(args) -> int:
    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.bootstrap import bootstrap_ci
    from polymodal.eval.caveats import data_caveats, warn_of_few
    from polymodal.eval.limit import check_limit, first_photos
    from polymodal.eval.per_item import check_outputs, check_strict, write_items, write_page
    from polymodal.eval.vqa import read_qa, vqa_accuracy

    check_limit(args.limit)
    check_outputs(args, args.qa)
    with counting_skipped(args.split) as skipped:
        rows = read_qa(args.qa)
    rows = [rows[i] for i in first_photos([r.image for r in rows], args.limit)]  # a photo's questions stay together
    check_strict(args, skipped[0])
    model = _load_vqa_model(args.model, args.runtime, args.precision)
    images = {str(r.image) for r in rows}
    caveats = data_caveats(args.model, sorted(images), skipped[0], args.split, args.limit)
    warn_of_few(len(images), "photos", "accuracy")
    items: list = []
    # the bar goes to stderr: the JSON line stays alone on stdout
    metrics = vqa_accuracy(model, rows, details=items, progress=not args.quiet)
    check_strict(args, 0, metrics.get("unreadable", 0), metrics.get("not_finite", 0), "NaN-answered question")
    if args.ci:
        scored = [item for item in items if "score" in item]  # a photo's questions resampled together
        metrics["accuracy_ci95"] = bootstrap_ci([i["score"] for i in scored], [i["image"] for i in scored])
    if args.out:
        write_items(args.out, items, args.model, [r.image for r in rows])
    line = {"model": args.model, "runtime": args.runtime, **how_it_ran(model, args), "questions": len(rows),
            **caveats, **metrics}
    write_page(args, "vqa", line, items)
    print(json.dumps(line))
    return 0


def add_parsers(sub, actions: dict) -> None:
    s = sub.add_parser("vqa", help="answer a question about an image (or every question of a file: --qa)")
    s.add_argument("image", nargs="?", help="image file")
    s.add_argument("question", nargs="?", help='e.g. "what color is the shape?"')
    s.add_argument("--qa", nargs="+", metavar="FILE", help='instead of IMAGE QUESTION: answer every question of '
                   'these files (rows {"image", "question"}, "answer" not needed; VQA v2 questions files as '
                   'downloaded, test-dev too), one JSON line each')
    s.add_argument("--out", metavar="FILE", help="with --qa: write the answers to FILE instead: .jsonl one JSON line "
                   "each, .json the VQA evaluation server's results file ([{question_id, answer}])")
    s.add_argument("--choices", help="comma-separated candidate answers, e.g. yes,no (with --qa: for the rows "
                   "without their own \"choices\")")
    s.add_argument("--model", default="easy-vqa", help="built-in name, fusion-encoder folder or ONNX export "
                   "(default: easy-vqa)")
    s.add_argument("--top-k", type=int, default=3, help="alternatives shown with their scores (default 3)")
    s.add_argument("--explain", metavar="OUT_PNG", help="also save a heat map of where the model looked")
    add_runtime(s, "onnx: answer with the model's `polymodal export onnx` folder (--explain then maps by occlusion)")
    add_precision(s, "; coco-yesno runs fp32 only")  # easy-vqa, `train vqa` models: the fusion encoder's lite tower
    add_quiet(s)  # (a bar only with --qa)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_vqa)

    s = actions["train"].add_parser("vqa", help="fusion encoder for visual question answering on image-question-answer rows")
    s.add_argument("--qa", nargs="+", help='JSONL of {"image", "question", "answer"} (image relative to the file)')
    s.add_argument("--val-qa", nargs="+", help="validation rows (default: split off --val-fraction by image)")
    s.add_argument("--out", help="run folder: model/, checkpoint.pt, metrics.jsonl")
    s.add_argument("--model", help="'new' (default) or a fusion-encoder folder to continue training or to fine-tune "
                                   "(a pretrained encoder from `polymodal train pretrain` gets a fresh VQA head)")
    s.add_argument("--new-head", action="store_true", help="with --model FOLDER: a fresh VQA head over these answers")
    s.add_argument("--freeze", help="comma-separated parts not to train: projections, image_proj, text_proj, fusion, itm, "
                                     "vqa")
    s.add_argument("--config", help=CONFIG_HELP)
    s.add_argument("--fusion-options", help='JSON options for the fusion, e.g. \'{"layers": 2}\'')
    s.add_argument("--pixel-patches", action="store_true", help="add raw-pixel patch embeddings to the grid tokens")
    s.add_argument("--itm-head", action="store_true", help="add an image-text matching head (train with --itm-weight)")
    add_run_options(s)
    add_recipe_flags(s, VQA_FLAGS, "polymodal.train.vqa:VQARecipe", VQA_HELPS)
    s.set_defaults(func=cmd_train_vqa)

    s = actions["eval"].add_parser("vqa", help="VQA accuracy, overall and per answer type, on a QA JSONL (rows "
                                   "with \"choices\" score as multiple choice)")
    s.add_argument("--qa", nargs="+", required=True, help="QA JSONL file(s), read as one set")
    s.add_argument("--model", default="easy-vqa", help="built-in name, fusion-encoder folder or ONNX export "
                                                       "(default: easy-vqa)")
    add_eval_options(s, ", each with all its questions", "onnx: answer with the model's `polymodal export onnx` folder",
                     "; coco-yesno runs fp32 only")
    s.set_defaults(func=cmd_eval_vqa)
