"""Command line: thin wrappers that parse arguments, call the library and print. User errors -> one line, exit 2."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import unicodedata
from dataclasses import asdict
from pathlib import Path

from polymodal.apps.templates import add_template_options, chosen_templates
from polymodal.cli_options import (add_precision, add_qdrant, add_quiet, add_runtime, index_model_name, load_model,
                                   qdrant_collection, resolve_runtime)
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError, out_of_memory
from polymodal.exit_gc import skip_exit_gc
from polymodal.models.inputs import none_could_be, plural
from polymodal.registry import require_embedding


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None))


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}  # a newline in a file name would break a table row


def _width(text: str) -> int:
    """Columns a terminal gives the text: CJK characters and most emoji take two, combining accents and joiners
    none (len() put a Chinese label's score a column to the right per character)."""
    return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(rows: list[tuple], headers: tuple) -> str:
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c).translate(_CONTROL) for c in r) for r in rows]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c + " " * (w - _width(c)) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


CLASSIFY_BATCH = 32  # images per forward pass; more images (or label prompts) than this show a progress bar
TIP_RUNTIME_AT = 500  # images embedded with torch in one run, from which `index` mentions --runtime onnx
# options holding paths (files, folders, or a model: a name or a path): "~" expanded (see expand_home)
PATH_OPTIONS = ("caption_model", "classes", "config", "db", "explain", "image", "images", "labels_file", "labels_from",
                "model", "negatives", "out", "pairs", "paths", "qa", "run", "templates_file", "texts", "val_pairs",
                "val_qa", "vqa_model", "zeroshot_labels")


def expand_home(args) -> None:
    """`--out=~/runs/x` reaches polymodal with its "~": a shell expands it only at the start of a word. Each path
    option starting with "~" is expanded, as every shell user expects; left as it was, `--out=~/x` made a folder
    named "~" in the working directory, and `--model=~/x` loaded the model but missed its training photos."""
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
                                 for v in value])


def cmd_index(args) -> int:
    from polymodal.index import ImageIndex, UpdateReport
    from polymodal.index.scan import image_file, printable_path, scan_images

    if not args.paths and args.qdrant is None and not args.prune:
        raise PolymodalError("pass folders of images or image files to index, e.g. polymodal index photos --db DB "
                             "(or only --prune, or --qdrant URL to push an existing index)")
    target_collection = qdrant_collection(args)  # a bad --qdrant or --collection is refused before any work
    folders, files, scans = [], [], {}
    for target in args.paths:  # every path is checked here, before the model loads
        if os.path.isdir(target):
            scans[target] = scan_images(target)  # an empty folder fails here; the sync below uses this listing
            folders.append(target)
        else:
            found = image_file(target)
            if isinstance(found, tuple):
                what = "not found" if not os.path.exists(target) else found[1]
                moved = (" (a folder indexed before and since moved or deleted: --prune alone drops its images)"
                         if not os.path.exists(target) else "")
                raise PolymodalError(f"{printable_path(str(target))}: {what}; pass folders of images or image files{moved}")
            files.append(target)
    folders = _outermost(folders)  # `index pics pics/2023`: each image is synced (and counted) once
    files = list({os.path.abspath(f): f for f in files}.values())  # `index a.jpg ./a.jpg` is one file
    files = [f for f in files if not _synced_by(f, folders)]  # `index pics pics/a.jpg`: a.jpg is counted once
    index = ImageIndex(args.db)
    fresh = not index.exists()
    reports = []
    bars = not (args.json or args.quiet)
    if args.paths:
        if not index.exists():  # a --db that cannot be made is said before the model loads
            from polymodal.cache import check_creatable

            check_creatable(index.db, f"--db {args.db}")
        args.model = index_model_name(index, args.model, "lite")  # re-syncing an index needs no --model
        resolve_runtime(args)
        # a model that cannot embed is refused here, before the index folder is created
        model = require_embedding(load_model(args, args.model, index), args.model)
        if target_collection:
            target_collection.preflight(model)
        try:
            if folders:  # one sync: a photo moved from one folder to another keeps its vector in either order
                reports.append(index.update_folders(folders, model, progress=bars, batch_size=args.batch_size,
                                                    scanned=[scans[f] for f in folders]))
            if files:
                reports.append(index.add(files, model, progress=bars, batch_size=args.batch_size))
        except BaseException as exc:  # an interrupt's "N of M saved" counts the paths finished before too
            if hasattr(exc, "index_progress"):
                finished = sum(r.added + r.updated for r in reports)
                exc.index_progress = tuple(n + finished for n in exc.index_progress)
            raise
    report = UpdateReport(*(sum(getattr(r, k) for r in reports) for k in ("added", "updated", "removed", "unchanged")),
                          skipped=[s for r in reports for s in r.skipped])
    unreadable = args.paths and report.skipped and not (report.added + report.updated + report.unchanged)
    if unreadable and fresh and index.discard_if_empty():  # nothing to keep, nothing to push
        if args.json:
            _print_json({**asdict(report), "index": None})
        else:
            _print_skipped(report.skipped)
        return _none_readable(report, discarded=True)
    pruned = index.prune() if args.prune else []
    info = index.info()
    pushed = target_collection and target_collection.push(index, progress=bars)
    if args.json:
        extra = {"qdrant": {**asdict(pushed), **target_collection.info()}} if pushed else {}
        if args.prune:
            extra["pruned"] = pruned
        _print_json({**asdict(report), "index": info, **extra})
        return _none_readable(report) if unreadable else 0
    if args.paths:
        what = ", ".join(folders + ([f"{len(files)} file{'s' * (len(files) != 1)}"] if files else []))
        print(f"indexed {what} into {args.db}: {report.summary()}; {plural(info['count'], 'image')}, "
              f"model {info['model']}")
        _print_skipped(report.skipped)
        if args.runtime == "torch" and report.added + report.updated >= TIP_RUNTIME_AT:
            from polymodal.export.runtime import is_onnx_folder
            from polymodal.registry import MODELS, onnx_export_dir

            exported = args.model in MODELS and is_onnx_folder(onnx_export_dir(args.model))
            then = "" if exported else f" (after `polymodal export onnx {args.model}`)" if args.model in MODELS else \
                f" (with --model DIR after `polymodal export onnx {args.model} --out DIR`)"
            print(f"tip: --runtime onnx embeds photos ~2x faster on a CPU{then}; the index stays the same",
                  file=sys.stderr)
    if args.prune:
        print(f"pruned {plural(len(pruned), 'image')} whose files are gone from {args.db}; "
              f"{plural(info['count'], 'image')} left" + (f" (first: {pruned[0]})" if pruned else ""))
    if pushed:
        print(f"pushed {args.db} to {target_collection.where()}: {pushed.summary()}; "
              f"{plural(target_collection.info()['count'], 'image')} in the collection")
    return _none_readable(report) if unreadable else 0


def _print_skipped(skipped) -> None:
    for path, reason in skipped:  # the reader's reason names the file again: once is enough
        print(f"  skipped {str(path).translate(_CONTROL)}: {reason.replace(f': {path} (', ' (')}")


def _none_readable(report, discarded: bool = False) -> int:
    """Exit status 2, with one error line, when every image file given was skipped (an empty folder is refused too);
    `discarded`: the new index this left empty was removed."""
    n = len(report.skipped)
    print(f"polymodal: error: none of the {n} image file{'s' * (n != 1)} could be read (the skipped list says why); "
          f"pass photos (JPEG, PNG, WebP, ...)" + ("; no index was made" if discarded else ""), file=sys.stderr)
    return 2


def _outermost(folders: list[str]) -> list[str]:
    """The folders not inside (or equal to) an earlier-listed or enclosing one, in the order given."""
    resolved = [Path(f).expanduser().resolve() for f in folders]
    keep = []
    for i, (folder, path) in enumerate(zip(folders, resolved)):
        inside = any(j != i and path.is_relative_to(other) and (path != other or j < i) for j, other in enumerate(resolved))
        if not inside:
            keep.append(folder)
    return keep


def _synced_by(file: str, folders: list[str]) -> bool:
    """Whether syncing one of `folders` embeds (and counts) `file` already: it lies under it and no part of its path
    there is hidden (the scan skips those, so a hidden file named by itself is still added)."""
    from polymodal.index.scan import canonical_path

    path = Path(canonical_path(file))
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        if path.is_relative_to(root) and not any(part.startswith(".") for part in path.relative_to(root).parts):
            return True
    return False


def cmd_search(args) -> int:
    from polymodal.index import ImageIndex

    where = f"--texts {args.texts}" if args.texts else "--db DB"  # the examples name what the user searches
    if (args.query is None) == (args.image is None):
        raise PolymodalError(f'pass either a text query or --image FILE, e.g. polymodal search {where} "a dog"')
    if args.query is not None and is_blank(args.query):
        raise PolymodalError(f'the text query is empty; pass some words, e.g. polymodal search {where} "a dog"')
    if args.k < 1:
        raise PolymodalError(f"-k/--top-k must be at least 1, got {args.k}")
    if args.explain is not None:  # a bad file name or folder is refused before the model loads and the 37 passes
        from polymodal.apps.explain import check_heatmap_path

        check_heatmap_path(args.explain, args.image)  # (an empty --explain "" too; the query photo's own file too)
    if sum((bool(args.db), args.qdrant is not None, bool(args.texts))) != 1:
        raise PolymodalError('pass one of --db DB (a local index), --qdrant URL (a collection) or --texts FILE (one '
                             'text per line), e.g. polymodal search --db DB "a dog"')
    if args.texts:
        return _search_texts(args)
    index = qdrant_collection(args) or ImageIndex(args.db)
    name = index_model_name(index, args.model)
    model = require_embedding(load_model(args, name, index), name)
    index.check_model(model)
    query = model.encode_image([args.image]) if args.image is not None else model.encode_text([args.query])
    hits = index.search(query, args.k)[0]
    explained, shown = None, _first_other(hits, args.image)
    if args.explain and hits:  # why the top match matched: occlusion relevance against the same query vector
        from polymodal.apps.explain import occlusion_heat, save_heatmap

        top = hits[shown].path
        if not os.path.exists(top):  # not a file the user passed: say where it went
            if hits[shown].host not in (None, socket.gethostname()):
                raise PolymodalError(f"--explain needs the top match's image, {top}, which is on {hits[shown].host}; "
                                     "run the search there, or drop --explain")
            push = " and push the index again" if args.qdrant else ""  # deleted or moved since it was indexed
            raise PolymodalError(f"--explain needs the top match's image, {top}, which is no longer there (moved or "
                                 f"deleted since it was indexed); re-index its folder{push} to drop it from the "
                                 "results, or drop --explain")
        asked = f"the image {args.image}" if args.image is not None else f'"{args.query}"'
        caption = f"Query: {asked}\nMatch: rank {shown + 1}, {top} (score {hits[shown].score:.3f}), model {name}"
        explained = str(save_heatmap(top, occlusion_heat(model, top, query[0]), args.explain, transform=model.transform,
                                     caption=caption, method="occlusion"))
    if args.json:
        rows = [{"rank": i + 1, "path": h.path, "score": round(h.score, 4), **({"host": h.host} if h.host else {})}
                for i, h in enumerate(hits)]
        if explained:  # on the row it explains, so the output is the same list with or without --explain
            rows[shown]["explain"] = explained
        _print_json(rows)
    else:
        here = socket.gethostname()  # a collection fed by several machines: say which one holds the file
        print(_table([(i + 1, f"{h.score:.3f}", h.path if h.host in (None, here) else f"{h.host}:{h.path}")
                      for i, h in enumerate(hits)], ("rank", "score", "path")))
        if explained:
            print(f"heat map of why rank {shown + 1} matched: {explained}")
        if not hits:  # a header alone would look like "nothing matched"
            print(f"polymodal: note: {index.where()} holds no images yet; `polymodal index FOLDER --db DB` adds some"
                  + (" and --qdrant URL pushes them" if args.qdrant else ""), file=sys.stderr)
    return 0


def _first_other(hits, image) -> int:
    """The rank (0-based) --explain maps: the top hit, or with --image an indexed query photo's own file the first
    hit after it: the photo matched with itself (score 1.0) maps nothing a user asked about."""
    for i, hit in enumerate(hits if image is not None else []):
        try:
            if not os.path.samefile(hit.path, image):
                return i
        except OSError:  # gone, or on another machine: not the query's file
            return i
    return 0


def _search_texts(args) -> int:
    """search --texts FILE: the file's lines ranked against the image (image->text) or the text query."""
    from polymodal.apps.text_search import read_text_lines, search_texts

    qdrant_collection(args)  # (there is no --qdrant here) refuses a --collection
    if args.explain and args.image is None:
        raise PolymodalError("--explain with --texts maps where in the --image the top text matches; pass --image")
    texts, lines = read_text_lines(args.texts)
    name = args.model or "default"  # trained on captions: better than lite at caption-style text
    model = require_embedding(load_model(args, name), name)
    query = model.encode_image([args.image]) if args.image is not None else model.encode_text([args.query])
    hits = search_texts(model, query, texts, args.k, lines, progress=not args.json)[0]
    explained = None
    if args.explain:  # where in the query photo the best text matches
        from polymodal.apps.explain import occlusion_heat, save_heatmap

        heat = occlusion_heat(model, args.image, model.encode_text([hits[0].text])[0])
        caption = (f'Text: "{hits[0].text}" (rank 1, score {hits[0].score:.3f}), model {name}\n'
                   f"where it matches {args.image}")
        explained = str(save_heatmap(args.image, heat, args.explain, transform=model.transform, caption=caption,
                                     method="occlusion"))
    if args.json:
        rows = [{"rank": i + 1, "text": h.text, "score": round(h.score, 4), "line": h.line} for i, h in enumerate(hits)]
        if explained:
            rows[0]["explain"] = explained
        _print_json(rows)
    else:
        print(_table([(i + 1, f"{h.score:.3f}", h.line, h.text) for i, h in enumerate(hits)],
                     ("rank", "score", "line", "text")))
        if explained:
            print(f"heat map of where rank 1 matches the image: {explained}")
    return 0


def cmd_classify(args) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise PolymodalError(f"--top-k must be at least 1, got {args.top_k}")
    from polymodal.apps.zeroshot import distinct_labels, merged_labels_note

    labels = _labels(args)
    note = merged_labels_note(labels)
    if note:  # said once here: classify() would say it again for each batch of images (each image, after a bad one)
        logging.getLogger(__name__).warning("%s", note)
    labels = distinct_labels(labels)
    if len(labels) == 1:  # a softmax over one label is 1 whatever the image: say so rather than look confident
        print(f"polymodal: note: with one label every image scores 1.000 (scores are shared out among the labels); "
              f"pass two or more, e.g. --labels {labels[0]},other", file=sys.stderr)
    templates = chosen_templates(args)  # a bad template or templates file is refused before the model loads
    from polymodal.models.inputs import unreadable_files
    from polymodal.registry import check_model_name

    check_model_name(args.model)
    unreadable_files(args.images)  # none readable: said from their headers, not after ~5 s of loading the model
    model = require_embedding(load_model(args, args.model), args.model)
    # label and template mistakes end the command here, before any image; a long label list shows a bar
    prompts = len(labels) * len(templates or model.DEFAULT_TEMPLATES)
    model.label_embeddings(labels, templates, progress=not args.json and prompts > CLASSIFY_BATCH)
    from polymodal.models.inputs import each_or_error
    from polymodal.progress import progress_bar

    with progress_bar(total=len(args.images), desc="classifying", unit="img",
                      disable=args.json or len(args.images) <= CLASSIFY_BATCH) as bar:
        # a batch with an unreadable image is retried one by one: that image gets its error, the rest still run
        results = each_or_error(lambda chunk: model.classify(chunk, labels, templates=templates, top_k=args.top_k),
                                args.images, CLASSIFY_BATCH, bar)
    if all(isinstance(r, str) for r in results):  # nothing could be classified: one error, as before
        raise PolymodalError(none_could_be("classified", results))
    if args.json:
        _print_json([{"image": img, "error": r} if isinstance(r, str) else
                     {"image": img, "labels": [{"label": l, "score": round(s, 4)} for l, s in r]}
                     for img, r in zip(args.images, results)])
        return 0
    for img, ranked in zip(args.images, results):
        if isinstance(ranked, str):
            continue
        print(img)
        print(_table([(l, f"{s:.3f}") for l, s in ranked], ("label", "score")))
        print()
    for img, ranked in zip(args.images, results):
        if isinstance(ranked, str):
            print(f"polymodal: skipped {img}: {ranked}", file=sys.stderr)
    return 0


def _labels(args) -> list[str]:
    """--labels a,b,c or --labels-from FILE (one label per line, a JSON list or a one-column CSV: for long lists and
    labels with commas)."""
    if (args.labels is None) == (args.labels_from is None):
        raise PolymodalError("pass either --labels cat,dog,car or --labels-from FILE (one label per line)")
    if args.labels is not None:
        return [x.strip() for x in args.labels.split(",") if not is_blank(x)]  # "a,,b": a stray comma
    from polymodal.apps.text_search import read_text_lines
    from polymodal.data.csv_rows import csv_names, is_csv

    if is_csv(args.labels_from):  # its header is no label, nor is "cat,a photo of a cat"
        from polymodal.data.jsonl import existing_file

        path = existing_file(Path(args.labels_from), "labels file", "pass a text file with one label per line")
        labels = csv_names(path, "label")
        if not labels:
            raise PolymodalError(f"{path} holds no labels; write one label per line (under a header such as label)")
        return labels
    labels = read_text_lines(args.labels_from, "labels")[0]
    if labels[0].startswith("["):  # a JSON list of names, as `eval zeroshot --classes` reads one (it was one label)
        from polymodal.eval.zeroshot import json_names

        labels = [name.strip() for name in json_names(args.labels_from, "\n".join(labels), "label") if name.strip()]
        if not labels:
            raise PolymodalError(f"{args.labels_from} holds no labels; write one label per line, or a JSON list of "
                                 "names")
    return labels


def cmd_info(args) -> int:
    import polymodal
    from polymodal.cache import cache_dir
    from polymodal.export.runtime import is_onnx_folder
    from polymodal.registry import DESCRIPTIONS, onnx_export_dir, stale_builtin_export

    names = polymodal.available_models()
    exports = {n: onnx_export_dir(n) for n in names if is_onnx_folder(onnx_export_dir(n))}
    info = {
        "polymodal": polymodal.__version__,
        "models": {name: DESCRIPTIONS.get(name, "") for name in names},
        "cache": str(cache_dir()),
        # the built-in models `--runtime onnx` can run by name (`polymodal export onnx NAME` made these)
        "onnx_exports": {n: str(folder) for n, folder in exports.items()},
        # those made from an older built-in (loading them is refused): listed as if they served
        "onnx_exports_stale": [n for n, folder in exports.items() if stale_builtin_export(n, folder)],
    }
    if args.db:
        from polymodal.index import ImageIndex

        from polymodal.registry import stale_index

        info["index"] = ImageIndex(args.db).info()
        if why := stale_index(info["index"]):
            info["index"]["stale"] = why
    if collection := qdrant_collection(args):
        info["qdrant"] = collection.info()
    if args.model:
        from polymodal.trained_with import describe

        info["model"] = describe(args.model)
    if args.json:
        _print_json(info)
        return 0
    # the text shows what was asked: `info --qdrant URL` printed the built-in models' table (a screen of it) first.
    # --json keeps every key: scripts read "models" beside "index"
    blocks = []
    if not {"index", "qdrant", "model"} & set(info):  # `info` alone: the version, the built-in models, their exports
        stale = " (made from an older one: export it again)"
        exported = ", ".join(n + (stale if n in info["onnx_exports_stale"] else "") for n in info["onnx_exports"]) \
            or "none (polymodal export onnx NAME makes one)"
        blocks.append(f"polymodal {info['polymodal']}  (cache: {info['cache']})\n"
                      f"{_table(sorted(info['models'].items()), ('model', 'description'))}\n"
                      f"ONNX exports for --runtime onnx: {exported}")
    if "index" in info:
        blocks.append(_table(sorted((k, v) for k, v in info["index"].items()), ("index", "value")))
    if "qdrant" in info:
        blocks.append(_table(sorted((k, v) for k, v in info["qdrant"].items()), ("qdrant collection", "value")))
    if "model" in info:
        from polymodal.trained_with import summary_rows

        blocks.append(_table(summary_rows(info["model"]), ("model", "value")))
    print("\n\n".join(blocks))
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse's own mistakes (a bad flag value, a missing argument) as one line, like every other polymodal
    error, instead of the command's whole usage block (27 lines for `train contrastive`) before it.

    No abbreviated flags: argparse took `search --t FILE` for --texts until --top-k made it ambiguous, so any new
    flag could break, or silently change, a script's abbreviation. Every (sub)command parser is this class
    (add_subparsers makes its parsers of the parent's type, but passes no allow_abbrev down), so the default here
    covers them all."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def exit(self, status: int = 0, message: str | None = None):
        if status and _said_by_another_process():  # torchrun: the mistake once, not once per process
            message = None
        super().exit(status, message)

    def error(self, message: str):
        # a flag of one of its (sub)commands is no mistake: `polymodal train --resume` misses the task, not a flag
        known = self._flags_below()
        unknown = [a for a in getattr(self, "_argv", ()) if a.startswith("-") and a.split("=")[0] not in known
                   and not self._negative_number_matcher.match(a)]
        missing = message.startswith("the following arguments are required")
        # `polymodal -x`, `polymodal train -x`: the flag is the mistake, not a missing command (or task)
        if self._subparsers is not None and missing and unknown:
            message = f"unrecognized arguments: {' '.join(unknown)}"
        elif missing and unknown:  # `index pics --d DB`: --db is missing because --d is no flag (none is abbreviated)
            message += f"; unrecognized arguments: {' '.join(unknown)}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _flags_below(self) -> set[str]:
        """The flags this parser or any of its (sub)commands takes."""
        flags = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    flags |= parser._flags_below() if isinstance(parser, OneLineParser) else set()
        return flags

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        # the innermost (sub)command parsed finishes first and names itself: an unknown flag is then reported by the
        # top-level parser, which would otherwise point at `polymodal --help` instead of `polymodal classify --help`
        namespace, extras = super().parse_known_args(args, namespace)
        # ... unless the unknown flag came before this parser's (sub)command: `polymodal -x search` gave -x to
        # polymodal, not to search (the flags before a command are this parser's own, none taking a value)
        before = self._argv[:next((i for i, a in enumerate(self._argv) if not a.startswith("-")), 0)]
        if not hasattr(namespace, "_command_prog") or (self._subparsers is not None and set(extras) & set(before)):
            namespace._command_prog = self.prog
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        command = namespace.__dict__.pop("_command_prog", self.prog)
        if extras:
            self.exit(2, f"{self.prog}: error: unrecognized arguments: {' '.join(extras)} (see {command} --help)\n")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="polymodal", description="Multimodal models, offline: embed, search, classify, answer "
                      "questions, caption; train, evaluate, export and serve them.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    from polymodal import __version__  # the package's __init__ imports no torch

    p.add_argument("--version", action="version", version=f"polymodal {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="embed the images under folders (kept in sync: deleted files leave the "
                       "index) and image files into a persistent index")
    s.add_argument("paths", nargs="*", metavar="PATH", help="a folder of images or an image file; several allowed "
                   "(none with --qdrant: push the index as it is)")
    s.add_argument("--db", required=True, help="index folder (created if missing)")
    s.add_argument("--prune", action="store_true", help="also drop the images whose files no longer exist (a folder "
                   "moved or deleted; an unmounted drive looks deleted too); alone, without PATHs, only that")
    add_qdrant(s, "then push the index to this Qdrant (a server URL, or a folder for Qdrant's local mode); only "
               "new rows are sent, deleted ones are removed")
    s.add_argument("--model", help="built-in name or checkpoint path (default: the model the index was built "
                   "with; lite for a new index)")
    s.add_argument("--batch-size", type=int, default=32, help="images embedded per forward pass (default 32)")
    s.add_argument("--json", action="store_true", help="print the report as one JSON object, no progress bar")
    add_quiet(s)
    add_runtime(s, from_index=True)
    add_precision(s)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search an index (or a Qdrant collection) by text or by image, or rank the "
                       "lines of a text file (--texts)")
    s.add_argument("query", nargs="?", help="text query")
    s.add_argument("--image", help="query image file")
    s.add_argument("--db", help="a local index folder (built by polymodal index)")
    s.add_argument("--texts", metavar="FILE", help="rank the lines of this text file instead of images (image->text "
                   "with --image, text->text with a query; a line starting with # is a comment); model default: default")
    add_qdrant(s, "search this Qdrant collection instead of --db (pushed by polymodal index --qdrant)")
    # --top-k as classify's and vqa's: a script passing one flag name to every ranking command
    s.add_argument("-k", "--top-k", dest="k", type=int, default=10,
                   help="how many matches to show (default 10)")
    s.add_argument("--model", help="defaults to the index's model; another model is refused")
    s.add_argument("--explain", metavar="OUT", help="also save a heat map (.png, .jpg or .webp) of which parts of the "
                   "top match made it match (occlusion: each 2x2 block of a 7x7 grid blanked in turn; 37 extra "
                   "image passes)")
    s.add_argument("--json", action="store_true", help="print the matches as one JSON list")
    add_runtime(s, from_index=True)
    add_precision(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("classify", help="zero-shot classification of images against labels")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    s.add_argument("--labels", help="comma-separated, e.g. cat,dog,car")
    s.add_argument("--labels-from", metavar="FILE", help="a text file with one label per line (a line starting "
                   "with # is a comment), a JSON list of names, or a one-column .csv (a header such as label is "
                   "no label)")
    add_template_options(s, "'a photo of a {}.'")
    s.add_argument("--top-k", type=int, default=None, help="labels shown per image (default: all)")
    s.add_argument("--model", default="lite", help="built-in name, checkpoint or export folder (default: lite)")
    s.add_argument("--json", action="store_true", help="print one JSON list of the images and their labels")
    add_runtime(s)
    add_precision(s)  # as search and eval zeroshot: the same lite image tower embeds the photos
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("info", help="version, built-in models, and an index's or a model's details")
    # each of these shows its own details instead of the built-in models (what `info` alone shows)
    s.add_argument("--db", help="show this index folder's details")
    s.add_argument("--model", help="show this model folder's (RUN/model, an export) key and how it was trained")
    add_qdrant(s, "show this Qdrant collection's details")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_info)

    from polymodal.cli_train import add_parsers
    from polymodal.cli_vqa import add_parsers as add_vqa_parsers

    actions = add_parsers(sub)
    add_vqa_parsers(sub, actions)
    from polymodal.cli_pretrain import add_parsers as add_pretrain_parsers

    add_pretrain_parsers(sub, actions)
    from polymodal.cli_caption import add_parsers as add_caption_parsers

    add_caption_parsers(sub, actions)
    from polymodal.cli_eval_images import add_parsers as add_eval_images_parsers

    add_eval_images_parsers(sub, actions)
    from polymodal.cli_serve import add_parsers

    add_parsers(sub)
    from polymodal.cli_export import add_parsers as add_export_parsers

    add_export_parsers(sub)
    from polymodal.cli_cache import add_parsers as add_cache_parsers

    add_cache_parsers(sub)
    _verbose_everywhere(p)
    return p


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """-v also after the subcommand (`polymodal index pics --db x -v`), as the error hints say. SUPPRESS keeps a
    subcommand without -v from resetting the top-level flag."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                   help="log progress details")
                _verbose_everywhere(child)


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a service manager), raised like Ctrl-C so cleanups run: an export's staging
    folder, an index transaction. Python's default SIGTERM ends the process without running them."""


def _raise_terminated(signum, frame) -> None:
    if _importing(frame):  # raised inside an import that torch runs from C++ (pybind11), it aborts the process
        import threading

        again = threading.Timer(0.1, os.kill, (os.getpid(), signum))  # so the signal comes back after the import
        again.daemon = True
        again.start()
        return
    raise Terminated()


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _sigterm_cleans_up():
    """While a command runs: SIGTERM raises Terminated, unless someone else already handles SIGTERM (or this is
    not the main thread, where handlers cannot be set)."""
    previous = signal.getsignal(signal.SIGTERM)
    installed = False
    if previous == signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, _raise_terminated)
            installed = True
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _memory_said(args, before: tuple | None):
    """Running out of memory is one line (what the command kept, what to do), not the traceback of whichever
    allocator failed: PyTorch's, onnxruntime's, numpy's. -v keeps the traceback."""
    try:
        yield
    except Exception as exc:
        how = None if getattr(args, "verbose", False) else out_of_memory(exc)
        if how is None:
            raise
        raise PolymodalError(f"out of memory ({how}){_saved_work(exc, args, before)}; close other programs or run "
                             "where more memory is free (a smaller --batch-size, where the command has one, needs "
                             "less); -v shows where it ran out") from exc


def _refuse_torchrun(args) -> None:
    """Under torchrun every process runs the command: `train` splits its work (or, for the one-process trainers,
    refuses with its own line); the other commands would each do all of it (`index` failed on the other process's
    index lock with "terminated: 0 of N images saved", `eval` printed its figures once per process)."""
    world = _torchrun_processes()
    if world > 1 and args.command != "train":
        raise PolymodalError(f"`polymodal {args.command}` runs in one process and does not split its work under "
                             f"torchrun (each of the {world} processes would do all of it); start it as "
                             f"`polymodal {args.command} ...`. `train contrastive` is the command that trains "
                             "across torchrun processes")


def _torchrun_processes() -> int:
    """How many processes torchrun started for this run (1: not under torchrun). LOCAL_RANK too, which torchrun
    gives each process: a cluster job (Kubernetes' PyTorchJob) sets WORLD_SIZE for the whole container, where a
    script may run `polymodal eval` after its torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    return world if "LOCAL_RANK" in os.environ else 1


def _said_by_another_process(exc: BaseException | None = None) -> bool:
    """Under torchrun, whether another process prints this error, so that this one exits 2 without a line: the
    processes read the same command line and files, and each printed the same mistake. Once they have joined their
    group, `distributed` marks such errors (SaidElsewhere); before, each process of a machine runs the same code on
    the same input, and the machine's first process (LOCAL_RANK 0) says it."""
    distributed = sys.modules.get("polymodal.train.distributed")  # loaded by the commands that run under torchrun
    if distributed is not None and distributed.is_distributed():
        return isinstance(exc, distributed.SaidElsewhere)
    return _torchrun_processes() > 1 and os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0")


def _checkpoint_stamp(args) -> tuple | None:
    """A `train` command's RUN/checkpoint.pt as it was when the command began (None: none there). Every checkpoint
    is written to a new file and renamed, so one this command wrote never matches (compared by identity, not by a
    file server's clock against this machine's)."""
    out = getattr(args, "out", None)
    try:
        info = os.stat(Path(out) / "checkpoint.pt") if out and hasattr(args, "resume") else None
    except OSError:
        return None
    return info and (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def _saved_work(exc: BaseException, args, before: tuple | None = None) -> str:
    """What an interrupted index update (it commits as it goes, see ImageIndex.update) or training run (a checkpoint
    each epoch) kept, or "" if neither ran. ``before``: _checkpoint_stamp(args) when the command began."""
    saved, total = getattr(exc, "index_progress", (0, 0))
    out = getattr(args, "out", None)
    if not total and out and hasattr(args, "resume"):  # a `train` command
        checkpoint, overwrite = Path(out) / "checkpoint.pt", getattr(args, "overwrite", False)
        if not checkpoint.is_file():
            return ": no epoch had finished, so nothing was kept"
        # the checkpoint from before this command, with --overwrite: the run it was to replace, never moved (stopped
        # before training began) or moved back (stopped before an epoch finished)
        if getattr(exc, "replaced_run_restored", False) or (overwrite and _checkpoint_stamp(args) == before):
            return f": no epoch had finished; {out} holds the run --overwrite was to replace, as before"
        how = "with --resume instead of --overwrite" if overwrite else "with --resume"
        return f": {out} keeps the last finished epoch; run the same command {how} to continue"
    if not total:
        return ""
    return (f": {saved:,} of {total:,} images to embed were saved to {args.db}; run the same command again to "
            "finish")


def _quiet_openmp_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the user chose): when other work shares the cores,
    spinning threads made torch 1.5-2x slower beside one busy process and 3-8x beside a test run; on a quiet
    machine sleeping costs 0-25% (benchmarks/omp_wait_policy.py): the bad case is the busy one. OpenMP reads it
    when torch loads, so this runs before any command imports torch; onnxruntime's sessions already sleep
    (allow_spinning 0)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _threads_within_quota()


def _threads_within_quota() -> None:
    """In a container with a CPU limit (or under taskset), PyTorch's OpenMP pool is still sized by the host's cores:
    OMP_NUM_THREADS (read when torch loads) is set to the CPUs this process can use, unless the user set it.
    onnxruntime's sessions take the same count (export.runtime.onnx_session)."""
    from polymodal.cpus import usable_cpus

    if "OMP_NUM_THREADS" not in os.environ and (usable := usable_cpus()):
        os.environ["OMP_NUM_THREADS"] = str(usable)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def _keep_freed_memory() -> bool:
    """glibc's malloc gets blocks above its mmap threshold (32 MB at most) straight from the kernel and unmaps them
    when freed, and hands the heap's free top back past its trim threshold, so each PyTorch pass over a batch
    page-faulted its activations in afresh: ~30% of the `lite` image tower's CPU time was system time. Served from
    the heap, whose free top goes back only past 128 MB, `polymodal index --runtime torch` uses ~17% less CPU
    (the tower alone ~30% less), the service ~18% less per image request, with the same vectors (index_ab.py and
    serve_ab.py of the stop-43 speed review; 1,000 Flickr8k photos: 25.4 -> 19.5 CPU s, peak 583 -> 600 MB). Not
    for `train`: backward passes through unfrozen blocks fragment the heap, and 300 photos with
    --image-trainable-blocks 2 peaked at 2.6 GB instead of 1.8 GB. Left alone where the user tuned malloc (MALLOC_*
    or GLIBC_TUNABLES) or it is not glibc. Returns whether it was set."""
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ or any(
            k.startswith("MALLOC_") for k in os.environ):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20))
    except (OSError, AttributeError):
        return False


def _file_names_print() -> None:
    """A file name that is not UTF-8 (a Latin-1 photo archive) reaches Python with its odd bytes as surrogates, which
    stdout refuses under a strict locale such as en_US.UTF-8 (C.UTF-8 writes them back as bytes): `classify *.jpg`
    and `caption` stopped halfway with a traceback. They are written back as the bytes, as `ls` shows them; another
    character the locale's encoding lacks as \\uXXXX."""
    if getattr(sys.stdout, "errors", None) != "strict" or not hasattr(sys.stdout, "reconfigure"):
        return
    import codecs

    def as_bytes(exc):
        try:
            return codecs.lookup_error("surrogateescape")(exc)
        except UnicodeError:
            return codecs.lookup_error("backslashreplace")(exc)

    codecs.register_error("polymodal.file_names", as_bytes)
    try:
        sys.stdout.reconfigure(errors="polymodal.file_names")
    except (OSError, ValueError):  # a closed or detached stdout
        pass


def interrupt_status(exc: KeyboardInterrupt) -> tuple[str, int]:
    """(word, exit code) for a Ctrl-C or SIGTERM: 130 and 143, what a shell reports for a process they ended."""
    return ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)


def _quiet_closed_stdout() -> int:
    """`polymodal ... | head`: the reader left; stop quietly like other Unix tools (exit 141, as SIGPIPE would)."""
    try:  # later flushes (at exit) then go nowhere instead of failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def _say(text: str) -> None:
    """One error line on stderr in one write: under torchrun every process prints its error to the same stderr,
    and print()'s two writes (the text, then the newline) let two processes' lines run together
    ("... or choose another --outpolymodal: error: ...")."""
    if sys.stderr is not None:  # (pythonw: none; print() wrote nothing there either)
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def main(argv=None) -> int:
    args = before = None
    try:  # from the start: Ctrl-C while the parser's imports load is one line too, not a traceback
        _quiet_openmp_waits()
        _file_names_print()
        from polymodal.data.images import quiet_pillow_size_warnings

        quiet_pillow_size_warnings()
        args = build_parser().parse_args(argv)
        _refuse_torchrun(args)
        if args.command != "train":  # training through unfrozen blocks peaked 43% higher (1.8 -> 2.6 GB) with it
            _keep_freed_memory()
            skip_exit_gc()  # torch's heap is not collected at exit: 0.5-1 s of every command (not train's)
        expand_home(args)
        resolve_runtime(args)
        before = _checkpoint_stamp(args)  # what an interrupted `train` kept is judged against it
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        logging.getLogger("faiss").setLevel(logging.WARNING)  # -v: not its "Could not load library with AVX512" chatter
        from polymodal.eval.per_item import strict_reading

        with _sigterm_cleans_up(), strict_reading(args), _memory_said(args, before):
            code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_closed_stdout()
    except PolymodalError as exc:  # text from the command line or a file name may hold undecodable bytes
        if not _said_by_another_process(exc):
            _say(f"polymodal: error: {str(exc).encode('utf-8', 'backslashreplace').decode()}")
        return 2
    except KeyboardInterrupt as exc:
        word, code = interrupt_status(exc)
        _say(f"polymodal: {word}{_saved_work(exc, args, before)}")
        return code
    except RuntimeError as exc:
        distributed = sys.modules.get("polymodal.train.distributed")  # loaded by the commands that run under torchrun
        if getattr(args, "verbose", False) or distributed is None or not distributed.another_process_stopped(exc):
            raise
        # under torchrun: another process stopped first (its own error, or killed: torchrun says so); this one's
        # traceback of the collective that lost its peer would only bury that
        where, world = distributed.place()
        _say(f"polymodal: error: process {where} of {world} stops: another process "
             f"of this torchrun run stopped first (its error, or torchrun's report of how it ended, says why)"
             f"{_saved_work(exc, args, before)}")
        return 2
    except OSError as exc:  # mostly a path that cannot be made or written (its parent is a file, no permission)
        if getattr(args, "verbose", False):
            raise  # the whole story, for a bug report
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        _say(f"polymodal: error: {exc.strerror or exc}{': ' + where if where else ''} (a file-system error: check "
             "that path and the free space; -v shows the details)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
