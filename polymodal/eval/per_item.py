"""`eval ... --out FILE.jsonl --ci --strict`: every item's result as a JSONL file (to inspect mistakes, or to compare
two models item by item), 95% bootstrap intervals beside the headline figures, and a failed run instead of figures
computed on part of the data."""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path

from polymodal.cache import atomic_write_bytes, is_special_file, temp_beside
from polymodal.errors import PolymodalError


def add_item_options(parser, ci: bool = True) -> None:
    parser.add_argument("--out", metavar="FILE.jsonl", help="also write one JSON line per evaluated item")
    # ci=False: corpus scores (eval captions), whose page puts the photos with the lowest CIDEr-D of their own first
    order = "the model's failures first" if ci else "the lowest CIDEr-D first"
    parser.add_argument("--page", metavar="FILE.html", help="also write a page to look at in a browser: the figures, "
                        f"then the items with their photos, {order} (the first 200; one file that opens offline)")
    parser.add_argument("--split", metavar="NAME", help='read only the rows whose "split" (JSON field, CSV or '
                        "Parquet column) is one of these comma-separated names (e.g. dev, or train,restval); the JSON "
                        "line then names it")
    # the scores of eval captions are corpus scores, of no photo embedded or question answered
    broken = ", or the model embeds a photo (or answers a question) as NaN or inf (not_finite)" if ci else ""
    parser.add_argument("--strict", action="store_true", help="fail (exit 2, no figures) when any row is skipped"
                        f"{',' if ci else ' or'} any image cannot be read{broken}")
    parser.add_argument("--ci", action="store_true", help=(
        "add 95%% intervals as NAME_ci95: [low, high] (bootstrap over photos, 1,000 resamples, seed 0; Wilson when "
        "every item scores the same)") if ci else argparse.SUPPRESS)


def refuse_ci(args, why: str) -> None:
    if getattr(args, "ci", False):
        raise PolymodalError(f"--ci is not offered here: {why}")


def check_outputs(args, inputs=()) -> None:
    """check_out for --out and --page, and the two not one file (the page would replace the items)."""
    check_out(args.out, inputs)
    page = getattr(args, "page", None)
    check_out(page, inputs, "--page", ".html")
    if page is not None and args.out is not None and Path(page).resolve() == Path(args.out).resolve():
        other = Path(page).with_suffix(".html") if Path(page).suffix != ".html" else \
            Path(page).with_name(Path(page).stem + ".page.html")
        raise PolymodalError(f"--page {page} is also --out: pass two file names, e.g. --page {other}")


def check_out(path: str | None, inputs=(), flag: str = "--out", suffix: str = ".jsonl") -> None:
    """Before any work: a folder, a file in a folder that is not there, or one of the evaluation's own data files
    (``inputs``) is one error, not a lost evaluation or overwritten data. ``flag`` names the option (``suffix`` its
    files' ending, for the examples)."""
    if path is None:
        return
    out = Path(path)
    example = "items" + suffix if suffix == ".jsonl" else "results" + suffix
    if any(out.resolve() == Path(i).resolve() for i in inputs):
        raise PolymodalError(f"{flag} {out} is one of the data files being evaluated; pass another file name, "
                             f"e.g. {flag} {out.with_name(out.stem + '.' + example)}")
    if out.is_dir():
        raise PolymodalError(f"{flag} {out} is a folder; pass a file name, e.g. {flag} {out / example}")
    # write_items renames a finished file onto the path (see cache.is_special_file), and this command's own output
    # redirected to a file (`--out items.jsonl > items.jsonl`) would be replaced under the shell: both refused
    # before the whole evaluation, not after it
    if is_special_file(out) or any(_is_stream(out, fd) for fd in (1, 2)):
        raise PolymodalError(f"{flag} {out} is not a regular file (a device, a pipe or this command's own output); "
                             f"{flag} writes a file whole and then renames it into place: pass a file name, e.g. "
                             f"{flag} {example} (the JSON line of figures goes to stdout already)")
    parent = out.resolve().parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), parent)
    if not blocker.is_dir():  # ("does not exist" was said of a file)
        raise PolymodalError(f"{flag} {out}: {blocker} is a file, not a folder; pass a file name in a folder")
    if not parent.is_dir():
        raise PolymodalError(f"{flag} {out}: the folder {parent} does not exist; create it first")
    # the items are written at the end, as a temporary file renamed into place: one that cannot be made (no
    # permission, a read-only file system) is found here, not after the whole evaluation (as train's --out is)
    try:
        fd, tmp = temp_beside(out)
    except OSError as exc:
        raise PolymodalError(f"{flag} {out} cannot be written: {exc.strerror} in {parent}; pass a file in a folder "
                             "you can write") from exc
    os.close(fd)
    os.unlink(tmp)


def _is_stream(path: Path, fd: int) -> bool:
    """Whether ``path`` is the file open as ``fd`` (``/dev/stdout`` while stdout is redirected to a file)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except (OSError, ValueError):
        return False


def write_items(path: str | Path, items: list[dict], model=None, images=(), names=None) -> None:
    """Written whole, then renamed: an interrupted evaluation leaves no half file. With the evaluated ``images``
    (and their ``names`` as the items give them), each item says whether ``model`` was trained on its photo, so
    the held-out part can be scored apart."""
    from polymodal.training_photos import seen_flags

    images = list(images)
    flags = seen_flags(model, images) if model is not None else None
    if flags is not None:
        seen = dict(zip(names if names is not None else [str(i) for i in images], flags))
        items = [{**item, "seen_in_training": flag and flag[0], "seen_in_validation": flag and flag[1]}
                 for item in items for flag in [seen.get(item.get("image"))]]
    atomic_write_bytes(Path(path), "".join(json.dumps(item) + "\n" for item in items).encode())


def write_page(args, command: str, line: dict, items: list[dict]) -> None:
    """--page, when given: the items under the figures ``line``, failures first (polymodal.eval.page)."""
    if getattr(args, "page", None):
        from polymodal.eval.page import write_page as write

        write(args.page, command, line, items)


@contextmanager
def strict_reading(args):
    """--strict: the first image that cannot be read ends the command then, not after the whole pass (whose figures
    --strict would refuse anyway)."""
    if not getattr(args, "strict", False):
        yield
        return
    from polymodal.models.inputs import Unreadable, stop_at_first_unreadable

    try:
        with stop_at_first_unreadable():
            yield
    except Unreadable as exc:
        raise PolymodalError(f"--strict: an unreadable image: {exc}; fix the data or drop --strict to evaluate the "
                             "rest") from None


def check_strict(args, skipped: int, unreadable: int = 0, not_finite: int = 0,
                 not_finite_noun: str = "NaN-embedded image") -> None:
    """--strict: figures on part of the data are refused; the warnings above name the rows. ``not_finite``: images
    left out because the model embeds them as NaN or inf (or, ``not_finite_noun`` saying so, questions it answers
    so)."""
    if getattr(args, "strict", False) and (skipped or unreadable or not_finite):
        what = [f"{n:,} {noun}{'' if n == 1 else 's'}" for n, noun in ((skipped, "skipped row"),
                                                                        (unreadable, "unreadable image"),
                                                                        (not_finite, not_finite_noun)) if n]
        raise PolymodalError(f"--strict: {' and '.join(what)} (see the warnings above; -v lists each); fix the data "
                             "or drop --strict to evaluate the rest")
