"""`make demo`: index a gallery of real photos (installed with pip), search it, classify zero-shot, write captions.

    python -m polymodal.demo [--out demo-out] [--model lite]
"""

from __future__ import annotations

import argparse
import html
import io
import os
import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageOps

from polymodal.cache import atomic_write_bytes
from polymodal.cli import _quiet_closed_stdout, _sigterm_cleans_up, _table, interrupt_status
from polymodal.errors import PolymodalError

TEXT_QUERIES = ["a cat", "a hot drink", "a rocket launch", "a motorbike", "an old building with a roof", "a flower"]
CAPTIONED = ["astronaut", "coffee", "motorcycle", "rocket"]
LABELS = ["cat", "dog", "coffee", "rocket", "motorcycle", "flower", "temple", "person", "clock", "coins"]


def _query_image(gallery: Path, out: Path) -> Path:
    """A query that is not in the gallery: the coffee photo mirrored and cropped."""
    img = ImageOps.mirror(Image.open(gallery / "coffee.jpg").convert("RGB"))
    w, h = img.size
    path = out / "query-coffee-mirrored.jpg"
    buf = io.BytesIO()  # written whole, then renamed: a run stopped mid-write left a cut JPEG in place of the last
    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(buf, "JPEG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _write_page(out: Path, sections: list[tuple[str, list]], captions: list[tuple[Path, str]]) -> Path:
    """A small static page with thumbnails: results are easier to see than to read."""
    parts = ["<!doctype html><meta charset=utf-8><title>polymodal demo</title>",
             "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:4px;text-align:center}"
             "img{height:120px;border-radius:4px}figcaption{font-size:12px}</style><h1>polymodal demo</h1>"]
    for title, hits in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for h in hits:
            # a hit outside `out` (a copied index's row) still gets a link; quoted, as a '#' in a folder name ends a URL
            src = quote(Path(os.path.relpath(h.path, out.resolve())).as_posix())
            parts.append(f"<figure><img src='{html.escape(src)}'><figcaption>{html.escape(Path(h.path).name)} "
                         f"{h.score:.3f}</figcaption></figure>")
    parts.append("<h2>captions</h2>")
    for path, caption in captions:
        src = path.resolve().relative_to(out.resolve()).as_posix()
        parts.append(f"<figure><img src='{html.escape(src)}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    page = out / "results.html"
    atomic_write_bytes(page, "\n".join(parts).encode("utf-8"))  # the last run's page stays whole until replaced
    return page


def run(out: Path, model_name: str) -> None:
    import polymodal
    from polymodal.data.samples import write_sample_gallery
    from polymodal.index import ImageIndex
    from polymodal.index.store import IndexModelMismatch

    out.mkdir(parents=True, exist_ok=True)
    gallery = out / "gallery"
    print(f"1. Writing a gallery of real photos (scikit-image, scikit-learn) to {gallery}")
    write_sample_gallery(gallery)
    print(f"2. Loading model {model_name!r} (offline; the first run caches the class-prompt matrix)")
    model = polymodal.load(model_name)
    index = ImageIndex(out / "index")
    try:
        report = index.update(gallery, model)
    except IndexModelMismatch:  # its advice names --db, which `polymodal index` has and the demo has not
        built = index.info()["model_name"]
        raise PolymodalError(f"{out} holds the demo's index of model {built}; pass another --out to try --model "
                             f"{model_name} (or --model {built} to run it again here)") from None
    # an index from before the folder was moved or renamed holds the gallery under its old path too: those rows
    # would show each photo twice in every search
    report.removed += len(index.prune())
    print(f"3. Indexed {gallery}: {report.summary()}")

    sections = []
    print("\n4. Text -> image search (top 3)")
    for q in TEXT_QUERIES:
        hits = index.search_text(model, q, k=3)
        sections.append((f"text: {q}", hits))
        print(f"\n  query: {q!r}")
        print(_hits_table(hits))
    query = _query_image(gallery, out)
    hits = index.search_image(model, query, k=3)
    sections.append((f"image: {query.name}", hits))
    print(f"\n5. Image -> image search with {query.name} (not in the gallery)")
    print(_hits_table(hits))

    # temple and flower come from scikit-learn, which the gallery does without (polymodal.data.samples)
    names = [n for n in ("cat", "coffee", "rocket", "motorcycle", "temple", "flower")
             if (gallery / f"{n}.jpg").is_file()]
    results = model.classify([gallery / f"{n}.jpg" for n in names], LABELS, top_k=3)
    print(f"\n6. Zero-shot classification against {', '.join(LABELS)}")
    rows = [(f"{n}.jpg", *[f"{label} {score:.2f}" for label, score in r]) for n, r in zip(names, results)]
    print(_indent(_table(rows, ("photo", "1st", "2nd", "3rd"))))

    captioned = [gallery / f"{n}.jpg" for n in CAPTIONED]
    captions = polymodal.load("captioner").caption(captioned)
    print("\n7. Captions written by the built-in captioner (trained on 1,080 Flickr8k + COCO photos, mostly people and "
          "dogs:\n   it describes other scenes in those words; `polymodal train captioner --model captioner` fits it to yours)")
    print(_indent(_table([(p.name, c) for p, c in zip(captioned, captions)], ("photo", "caption"))))

    page = _write_page(out, sections, list(zip(captioned, captions)))
    print(f"\n8. Thumbnails of these results: {page}")
    print("\nOn your own photos:")
    command = polymodal_command()
    print(f"  {command} index ~/Pictures --db pics.idx")
    print(f'  {command} search --db pics.idx "a dog on the beach" -k 10')
    print(f"  {command} search --db pics.idx --image query.jpg")
    print(f"  {command} classify photo.jpg --labels cat,dog,car")
    print(f"  {command} caption photo.jpg")


def polymodal_command() -> str:
    """How to run polymodal from here: `polymodal` where the PATH finds this install's script; else the script's
    path (`.venv/bin/polymodal` after `make demo`; a pip install into another environment has its own); without
    one, this interpreter's `-m polymodal`."""
    python = Path(sys.executable)
    script = python.parent / ("polymodal.exe" if os.name == "nt" else "polymodal")
    found = shutil.which("polymodal")
    if found and Path(found).resolve() == script.resolve():
        return "polymodal"
    if script.is_file():
        return _as_typed(script)
    # no console script (run from a checkout without installing): the module, with this interpreter. Its bare name
    # only where the PATH finds this very file (not resolved: a venv's python is a link to one without its packages)
    on_path = shutil.which(python.name)
    same = on_path is not None and os.path.abspath(on_path) == os.path.abspath(python)
    return f"{python.name if same else _as_typed(python)} -m polymodal"


def _as_typed(path: Path) -> str:
    """`path` as a shell runs it: relative to the working folder where it lies under it, never a bare name (a shell
    looks that up on the PATH, which does not find this one), quoted where it holds a space."""
    try:
        relative = path.relative_to(Path.cwd())
        typed = str(relative) if len(relative.parts) > 1 else os.path.join(".", relative)
    except (ValueError, OSError):  # not under the working folder (or that folder was deleted)
        typed = str(path)
    if os.name == "nt":  # cmd.exe's quoting
        return f'"{typed}"' if " " in typed else typed
    return shlex.quote(typed)


def _hits_table(hits) -> str:
    """A search's hits as the demo prints them (text and image queries alike): rank, score, the photo's name."""
    return _indent(_table([(i + 1, f"{h.score:.3f}", Path(h.path).name) for i, h in enumerate(hits)],
                          ("rank", "score", "photo")))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # as polymodal's own
    ap.add_argument("--out", default="demo-out", type=Path)
    ap.add_argument("--model", default="lite")
    args = ap.parse_args(argv)
    try:
        with _sigterm_cleans_up():
            run(args.out, args.model)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except BrokenPipeError:  # `python -m polymodal.demo | head` (before OSError: no folder is to blame)
        return _quiet_closed_stdout()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line, as the polymodal commands say it
        word, code = interrupt_status(exc)
        print(f"polymodal: {word}; run the demo again to finish (it keeps what {args.out} holds)", file=sys.stderr)
        return code
    except PolymodalError as exc:
        print(f"polymodal: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out names a file, or a folder that cannot be written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"polymodal: error: {exc.strerror or exc}{where} (pass --out a folder that can be written)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
