"""Image-caption pairs for contrastive training and retrieval evaluation.

`read_pair_source(path)` reads any of:
- a JSONL file of {"image": path relative to the file, "caption": text} rows (extra keys ignored), or a JSON array
  of them, or COCO's or Karpathy's caption JSON as downloaded (see `polymodal.data.caption_json`);
- a CSV/TSV file with a header naming an image column (image, filepath) and a caption column (caption, title,
  text), as open_clip's CSV loader expects (tab-separated when the header has a tab, or as Excel's "sep=;" first line
  says), or Flickr30k's results.csv ("image_name| comment_number| comment"); paths relative to the file;
- Flickr8k's and Flickr30k's caption text files as published (Flickr8k.token.txt: "NAME.jpg#N<tab>caption") or as
  Kaggle's copies (captions.txt, a CSV), their photos found where those downloads put them (_FLICKR_PHOTOS);
- a folder of images with same-named .txt captions (`cat.jpg` + `cat.txt`, one caption per non-empty line);
- tar shards: a .tar file, a folder of them, a glob, or a brace pattern like `shards-{000..009}.tar`
  (see `polymodal.data.shards`); their images are referenced as "<shard>#<member>" strings;
- Parquet as Hugging Face datasets and img2dataset write it, the images inside referenced as "<file>#<row>" (see
  `polymodal.data.parquet_rows`; needs pyarrow).
JSONL rows may carry "negatives" (a text or a list), CSV files a "negatives" column (texts joined by "|") and
shard samples a "negatives" key in their .json (see `polymodal.data.shards.write_shards`):
hard-negative captions that describe the row's photo wrongly (NegCLIP; `polymodal train contrastive` uses them).
Rows that cannot be used (bad JSON, missing key, missing image file) are collected in `PairSet.skipped` and
logged; only a source with no usable pair at all is an error.

Torch-free: training reads the photos through `open_pair_image` (`polymodal.train.features` embeds them).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from polymodal.data import shards as _shards
from polymodal.data.augment import make_rng
from polymodal.data.caption_json import caption_json_rows
from polymodal.data.images import IMAGE_EXTENSIONS, load_image
from polymodal.data.jsonl import (SplitTally, data_file_image, iter_json_rows, missing_image, report_skipped,
                                  utf8_text)
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

# image_name, comment: Flickr30k's results.csv ("image_name| comment_number| comment"); file_name, text: Hugging
# Face ImageFolder's metadata.jsonl / metadata.csv, the usual layout of one's own captioned photos
IMAGE_COLUMNS = ("image", "filepath", "image_path", "file", "path", "image_name", "file_name")
CAPTION_COLUMNS = ("caption", "title", "text", "comment")
NEGATIVE_COLUMNS = ("negatives", "negative")
NEGATIVE_SEPARATOR = "|"  # several negatives in one CSV cell
FORMATS = (
    "a JSONL file of {\"image\", \"caption\"} rows (or COCO's or Karpathy's caption JSON), a CSV with "
    "image,caption (or filepath,title) columns (or Flickr8k's or Flickr30k's caption .txt), "
    "a folder of images with same-named .txt captions, tar shards (file, folder, glob or {000..009} pattern), "
    "or Parquet with the images inside (Hugging Face datasets, img2dataset)"
)


@dataclass(frozen=True)
class Pair:
    image: Path | str  # resolved image path, or "<shard>#<member>" for an image inside a tar shard
    caption: str
    negatives: tuple[str, ...] = ()  # hard-negative captions: texts that do not describe this image


@dataclass
class PairSet:
    pairs: list[Pair]
    images: list[Path | str]  # unique images, in order of first appearance
    caption_image: np.ndarray  # [C] int64: index into images of each pair's image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row / location, reason)
    source: str = ""

    @classmethod
    def from_pairs(cls, pairs: Iterable[Pair], skipped: Sequence = (), source: str = "") -> "PairSet":
        pairs = list(pairs)
        index: dict[Any, int] = {}
        owner = [index.setdefault(p.image, len(index)) for p in pairs]
        return cls(pairs, list(index), np.asarray(owner, dtype=np.int64), list(skipped), source)

    @property
    def captions(self) -> list[str]:
        return [p.caption for p in self.pairs]

    def captions_of(self, image_index: int) -> list[str]:
        return [self.pairs[c].caption for c in np.flatnonzero(self.caption_image == image_index)]

    def subset(self, image_indices: Iterable[int]) -> "PairSet":
        """The pairs of the given images (pair order kept; images renumbered by first appearance)."""
        keep = np.zeros(len(self.images), dtype=bool)
        keep[np.asarray(list(image_indices), dtype=np.int64)] = True
        return PairSet.from_pairs(
            (p for p, o in zip(self.pairs, self.caption_image) if keep[o]), source=self.source
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (f"PairSet({len(self.images)} images, {len(self.pairs)} captions, "
                f"{len(self.skipped)} skipped, source={self.source!r})")


# ---------------------------------------------------------------------------------------------- reading


ROWS_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")  # files of pair rows, as opposed to a folder's .txt captions


def read_pair_source(source: str | Path | Sequence[str | Path]) -> PairSet:
    """JSONL, CSV/TSV, Parquet, caption folder or tar shards -> PairSet (see the module docstring)."""
    if isinstance(source, (list, tuple)):
        return _finish(_read_shards(source), source)
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if _folder_images(path):
            found = _read_folder(path)
            rows_files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in ROWS_SUFFIXES)
            if rows_files:  # `--pairs data/` for data/pairs.jsonl + data/images/: the rows were meant
                hint = (f"{path} holds {rows_files[0]}: to read its rows, pass that file, not the folder (a folder is "
                        "read as images with same-named .txt captions)")
                if not found[0]:
                    raise PolymodalError(hint)
                log.warning(hint)
            return _finish(found, source)
        if any(_shards.is_tar(p) for p in path.iterdir()):
            return _finish(_read_shards(path), source)
        raise PolymodalError(f"folder {path} has no images and no .tar shards; pass {FORMATS}")
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".ndjson", ".json")):
            return _finish(_read_jsonl(path), source)
        if name.endswith((".csv", ".tsv")):
            return _finish(_read_csv(path), source)
        if name.endswith((".txt", ".token")) and (kind := _flickr_text_kind(path)):
            base = _flickr_photos(path)
            return _finish(_read_csv(path, base) if kind == "csv" else _read_flickr_token(path, base), source)
        if _shards.is_tar(name):
            return _finish(_read_shards(path), source)
        if name.endswith(".parquet") and path.with_suffix(".tar").is_file():  # img2dataset's, beside its shard
            raise PolymodalError(f"{path} is Parquet, which is not read: img2dataset's .parquet lists the metadata "
                                 f"of the .tar shard beside it; pass the shards (the folder {path.parent}, or a "
                                 "pattern such as '{00000..00009}.tar')")
        if name.endswith(".parquet"):
            return _finish(_read_parquet(path), source)
        raise PolymodalError(f"unknown pairs format: {path}; pass {FORMATS}")
    if _shards.looks_like_pattern(text):
        return _finish(_read_shards(text), source)
    raise PolymodalError(f"pairs source not found: {path}; pass {FORMATS}")


def read_pair_sources(sources: Sequence[str | Path]) -> PairSet:
    """Several sources as one PairSet; a row given in two sources counts once."""
    if not sources:
        raise PolymodalError(f"no pair source given; pass {FORMATS}")
    sets = [read_pair_source(s) for s in sources]  # each warns about its unreadable rows
    if len(sets) == 1:
        return sets[0]
    repeats: list = []  # the same pair in two sources: counted once, and said (each source reported its own)
    first: dict = {}  # (image, caption) -> the source that gave it first
    pairs = []
    for ps, given in zip(sets, sources):
        for pair in ps.pairs:
            key = (pair.image, pair.caption)
            if key in first:
                repeats.append((str(pair.image), f"repeats in {given} the caption {pair.caption!r} given for it in "
                                                 f"{first[key]}"))
                continue
            first[key] = given
            pairs.append(pair)
    source = ",".join(map(str, sources))
    report_skipped(source, repeats, len(pairs), "image-caption pairs", f"pass {FORMATS}", "repeated row")
    return PairSet.from_pairs(pairs, [x for ps in sets for x in ps.skipped] + repeats, source=source)


def _finish(result: tuple[list[Pair], list[tuple[str, str]]], source: Any) -> PairSet:
    pairs, skipped = result
    pairs = without_repeats(pairs, skipped)
    name = str(source) if isinstance(source, (str, Path)) else "::".join(str(s) for s in source)
    report_skipped(name, skipped, len(pairs), "image-caption pairs", f"pass {FORMATS}", "unusable row or file")
    return PairSet.from_pairs(pairs, skipped, name)


def without_repeats(pairs: list[Pair], skipped: list) -> list[Pair]:
    """A caption given twice for the same image (a repeated row) would weigh twice in training and count twice in
    recall: keep the first, report the others as skipped."""
    seen: set = set()
    kept = []
    for pair in pairs:
        key = (pair.image, pair.caption)
        if key in seen:
            skipped.append((str(pair.image), f"repeats the caption {pair.caption!r} of an earlier row"))
            continue
        seen.add(key)
        kept.append(pair)
    return kept


class _ImageCheck:
    """Resolves image paths relative to a base folder and remembers which exist."""

    def __init__(self, base: Path):
        self.base, self.seen = base, {}
        self.rows: dict = {}  # (image, caption) -> "file:line" of the row that gave it first

    def __call__(self, image: str) -> Path | None:
        path = data_file_image(self.base, image)
        if path not in self.seen:
            self.seen[path] = path.is_file()
        return path if self.seen[path] else None


def _pick(row: dict, names: Sequence[str]) -> Any:
    return next((row[n] for n in names if row.get(n) not in (None, "")), None)


def _clean(caption: Any) -> str:
    return _shards.clean_caption(str(caption))


def _read_jsonl(path: Path) -> tuple[list[Pair], list]:
    pairs, skipped = [], []
    check = _ImageCheck(path.parent)
    for where, row, why in iter_json_rows(path, "pass one JSON object per line, or COCO's or Karpathy's caption JSON",
                                          CAPTION_COLUMNS + NEGATIVE_COLUMNS, IMAGE_COLUMNS, caption_json_rows):
        if row is None:
            skipped.append((where, why))
            continue
        _add_row(pairs, skipped, where, _pick(row, IMAGE_COLUMNS), _pick(row, CAPTION_COLUMNS), check,
                 _pick(row, NEGATIVE_COLUMNS))
    return pairs, skipped


def _texts(value: Any) -> list[str]:
    """A JSON string/list (or a CSV cell, already split) -> cleaned, non-empty texts."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    return [c for c in (_clean(v) for v in values) if c]


def _negative_texts(value: Any) -> list[str]:
    """Like _texts, but only strings count: a nested list or an object is no caption."""
    values = value if isinstance(value, list) else [value]
    return _texts([v for v in values if isinstance(v, str)])


def _add_row(pairs: list, skipped: list, where: str, image: Any, caption: Any, check: _ImageCheck,
             negatives: Any = None, ref: bool = False) -> None:
    """``ref``: ``image`` names an image inside a file ("<file>#<row>"), not a path to check."""
    if image is None:
        skipped.append((where, f"no image key (one of {', '.join(IMAGE_COLUMNS)})"))
        return
    if caption is not None and not all(isinstance(c, str) for c in (caption if isinstance(caption, list) else [caption])):
        skipped.append((where, f"the caption must be text (a string or a list of strings), got {caption!r:.60}"))
        return
    captions = _texts(caption)
    if not captions:
        skipped.append((where, f"no caption (one of {', '.join(CAPTION_COLUMNS)})"))
        return
    resolved = image if ref else check(str(image))
    if resolved is None:
        skipped.append((where, missing_image(image, check.base)))
        return
    wrong = tuple(_negative_texts(negatives))
    for c in captions:
        first = check.rows.setdefault((resolved, c), where)
        if first != where:  # reported by its line, as other skipped rows are (without_repeats knows no lines)
            skipped.append((where, f"repeats the caption {c!r} of {first}"))
            continue
        pairs.append(Pair(resolved, c, tuple(n for n in wrong if n != c)))


def _read_parquet(path: Path) -> tuple[list[Pair], list]:
    """Hugging Face datasets' and img2dataset's Parquet (data/parquet_rows.py): images inside the file, or paths."""
    from polymodal.data.parquet_rows import CAPTION_COLUMNS as CAPTIONS, captions_of, read_rows

    pairs, skipped = [], []
    check = _ImageCheck(path.parent)
    inside, rows = read_rows(path, CAPTIONS)
    for where, row in rows:
        _add_row(pairs, skipped, where, row["image"], captions_of(_pick(row, CAPTIONS)), check,
                 _pick(row, NEGATIVE_COLUMNS), ref=inside)
    return pairs, skipped


def _read_csv(path: Path, base: Path | None = None) -> tuple[list[Pair], list]:
    """``base``: the folder image paths are relative to (default: the file's)."""
    pairs, skipped = [], []
    check = _ImageCheck(base or path.parent)
    with utf8_text(path, newline="") as f:
        blank, delimiter = 0, None  # blank lines above the header: csv takes the first line as the header, and a
        while True:  # blank one named no column (the file was called empty); rows keep their line numbers in the file
            start = f.tell()
            header = f.readline()
            excel = delimiter is None and re.fullmatch(r'"?sep=(.)"?', header.rstrip("\r\n"))
            if excel:  # Excel's "sep=;" first line: the separator its rows use (a ; in locales with a decimal comma)
                delimiter, blank = excel.group(1), blank + 1
                continue
            if header.strip() or not header:
                break
            blank += 1
        f.seek(start)
        # "|" only where the header has neither tab nor comma: Flickr30k's results.csv separates its cells so
        delimiter = delimiter or ("\t" if "\t" in header or path.suffix.lower() == ".tsv" else
                                  "|" if "|" in header and "," not in header else ",")
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
        image_col = next((columns[c] for c in IMAGE_COLUMNS if c in columns), None)
        caption_col = next((columns[c] for c in CAPTION_COLUMNS if c in columns), None)
        negative_col = next((columns[c] for c in NEGATIVE_COLUMNS if c in columns), None)
        # a split column works as JSON rows' "split" field: --split keeps some rows, and a file read whole says so
        splits = SplitTally(path) if "split" in columns else None
        if not columns:
            raise PolymodalError(f"{path} is empty; write a header line (e.g. image,caption), then one row per pair")
        if image_col is None or caption_col is None:
            raise PolymodalError(
                f"{path}: header has columns {list(columns)}; it needs an image column ({', '.join(IMAGE_COLUMNS)}) "
                f"and a caption column ({', '.join(CAPTION_COLUMNS)})"
            )
        for row in reader:
            line = reader.line_num + blank
            where = f"{path}:{line}"
            joined = _lines_run_together(row, line, delimiter, check.base)
            if joined:
                first, last = joined
                why = (f"a quoted field runs over lines {first}-{last} (an unclosed \" quote?), so their "
                       f"{last - first + 1} lines were read as one row and left out; close the quote, or double a "
                       "quote inside a caption (\"\")")
                skipped.append((f"{path}:{first}-{last}", why))
                skipped.extend((f"{path}:{line}", why) for line in range(first + 1, last + 1))  # each line a row
                continue
            # a short row is read when only cells it needs not are missing (a spreadsheet drops empty trailing ones)
            if None in row or row[image_col] is None or row[caption_col] is None:
                skipped.append((where, f"row does not have the header's {len(columns)} fields"))
                continue
            if splits is not None and not splits.keep((row[columns["split"]] or "").strip()):
                continue  # another split: left out, neither read nor skipped
            image, caption = row[image_col].strip() or None, row[caption_col]
            negatives = row[negative_col].split(NEGATIVE_SEPARATOR) if negative_col and row[negative_col] else None
            _add_row(pairs, skipped, where, image, caption, check, negatives)
    if splits is not None:
        splits.finish(False, jq=False)
    return pairs, skipped


# Flickr8k's and Flickr30k's caption files as published: "NAME.jpg#N<tab>caption" lines (Flickr8k.token.txt,
# results_20130124.token), or Kaggle's copies, a CSV with an image,caption header named captions.txt
_TOKEN_LINE = re.compile(r"([^\t#]+)#\d+\t(.*)")
# where those photos lie, first to last: beside the file, in its Images/ (Kaggle's), or in the folder the Flickr zips
# unpack beside the text files' (Flicker8k_Dataset: sic)
_FLICKR_PHOTOS = (".", "Images", "images", "../Flicker8k_Dataset", "../Flickr8k_Dataset", "../flickr30k-images",
                  "../Images", "../images")


def _flickr_text_kind(path: Path) -> str | None:
    """"token" or "csv" for a .txt (or .token) file in one of Flickr's caption layouts, else None."""
    with utf8_text(path) as f:
        first = next((line for line in f if line.strip()), "")
    if _TOKEN_LINE.fullmatch(first.rstrip("\r\n")):
        return "token"
    cells = {c.strip().lower() for c in re.split(r"[,\t|]", first)}
    return "csv" if cells & set(IMAGE_COLUMNS) and cells & set(CAPTION_COLUMNS) else None


def _flickr_photos(path: Path) -> Path:
    """The first of _FLICKR_PHOTOS (relative to the file's folder) that holds an image, else the file's folder."""
    for name in _FLICKR_PHOTOS:
        folder = (path.parent / name).resolve()
        if folder.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
            return folder
    return path.parent


def _read_flickr_token(path: Path, base: Path) -> tuple[list[Pair], list]:
    """Rows of a token file; with Flickr8k's split lists beside it (Flickr_8k.trainImages.txt, ...), each photo's split
    is the list naming it: --split keeps some, as a JSON row's "split" field does."""
    pairs, skipped = [], []
    check = _ImageCheck(base)
    split_of = _flickr8k_splits(path.parent)
    splits = SplitTally(path) if split_of else None
    with utf8_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            match = _TOKEN_LINE.fullmatch(line.rstrip("\r\n"))
            if match is None:
                skipped.append((f"{path}:{n}", "not a NAME.jpg#N<tab>caption line"))
                continue
            image = match.group(1).strip()
            if splits is not None and not splits.keep(split_of.get(image)):
                continue  # another split: left out, neither read nor skipped
            _add_row(pairs, skipped, f"{path}:{n}", image, match.group(2), check)
    if splits is not None:
        splits.finish(False, jq=False)
    return pairs, skipped


def _flickr8k_splits(folder: Path) -> dict[str, str]:
    """photo name -> "train", "dev" or "test", from Flickr8k's split lists in ``folder`` ({} without them)."""
    split_of = {}
    for split in ("train", "dev", "test"):
        names = folder / f"Flickr_8k.{split}Images.txt"
        if names.is_file():
            with utf8_text(names) as f:
                split_of.update((line.strip(), split) for line in f if line.strip())
    return split_of


def _lines_run_together(row: dict, end: int, delimiter: str = ",", base: Path | None = None
                        ) -> tuple[int, int] | None:
    """(first, last) line of the row when a cell holds a line break followed by a line that reads as a row of the
    file (a field naming an image), else None. Such a break means a quote left open, which makes csv read every
    following row into this one (up to the next quote, or to the end of the file). A quoted caption whose later lines
    name no image is one caption written over lines (valid CSV: Excel and pandas write a cell's line breaks so): it is
    read, its breaks made spaces, a comma on a later line too ("It is sunny, and warm.")."""
    cells = [v for value in row.values() for v in (value if isinstance(value, list) else [value])]
    later = (line for v in cells if isinstance(v, str) for line in v.split("\n")[1:] if delimiter in line)
    if not any(_names_an_image(line, delimiter, base) for line in later):
        return None  # no swallowed row: every row of the file names its image
    # the swallowed cell's own last break ends the row; blank lines after it at EOF are lines csv read too
    breaks = sum(v.count("\n") - v.endswith("\n") for v in cells if isinstance(v, str))
    return (end - breaks, end) if breaks else None


def _names_an_image(line: str, delimiter: str, base: Path | None) -> bool:
    """Whether a line inside a quoted cell looks like a row of the file: one of its fields ends in an image extension
    or names an existing file (an image column without extensions)."""
    for value in line.split(delimiter):
        value = value.strip().strip('"').strip()
        if value.lower().endswith(IMAGE_EXTENSIONS):
            return True
        try:
            if value and base is not None and (base / value).is_file():
                return True
        except (OSError, ValueError):  # a name too long, a NUL: caption text, not a path
            pass
    return False


def _folder_images(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not any(s.startswith(".") for s in p.relative_to(root).parts)
        and p.is_file()
    )


def _read_folder(root: Path) -> tuple[list[Pair], list]:
    pairs, skipped = [], []
    for image in _folder_images(root):
        where = str(image.relative_to(root))
        txt = image.with_suffix(".txt")
        if not txt.is_file():
            skipped.append((where, f"no caption file {txt.name}"))
            continue
        try:
            lines = txt.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            skipped.append((where, f"unreadable caption file {txt.name} ({exc.__class__.__name__})"))
            continue
        captions = [c for c in (_clean(line) for line in lines) if c]
        if not captions:
            skipped.append((where, f"caption file {txt.name} is empty"))
            continue
        resolved = image.resolve()
        pairs.extend(Pair(resolved, c) for c in captions)
    return pairs, skipped


def _read_shards(patterns: Any) -> tuple[list[Pair], list]:
    pairs, skipped = [], _shards.SummarisedSkips()  # reported once by the reader's summary
    for sample in _shards.iter_samples(patterns, read_images=False, skipped=skipped):
        ref = _shards.tar_ref(sample.shard, sample.image_name)
        negatives = sample.negatives or [()] * len(sample.captions)
        pairs.extend(Pair(ref, c, n) for c, n in zip(sample.captions, negatives))
    return pairs, skipped


def open_pair_image(image: Path | str, min_size: int | None = None) -> Image.Image:
    """A `Pair.image` (file path or "<shard>#<member>") -> RGB PIL image (``min_size``: see load_image; pass the
    model's transform.draft_size so training decodes camera photos as indexing does)."""
    split = _shards.split_tar_ref(image)
    if split is None:
        return load_image(image, min_size)
    try:
        return load_image(_shards.read_tar_member(*split), min_size)
    except PolymodalError as exc:
        raise PolymodalError(f"{image}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- splitting


def split_by_image(pairset: PairSet, val_fraction: float, seed: int = 0) -> tuple[PairSet, PairSet]:
    """(train, val) with every caption of an image on the same side: see held_out_images."""
    if not 0.0 <= val_fraction < 1.0:
        raise PolymodalError(f"val_fraction={val_fraction} is out of range; pass a fraction in [0, 1)")
    if val_fraction == 0:
        return pairset.subset(np.arange(len(pairset.images))), pairset.subset(np.arange(0))
    train_images, val_images = held_out_images(pairset.images, val_fraction, seed,
                                               "pass validation pairs (--val-pairs FILE)")
    return pairset.subset(train_images), pairset.subset(val_images)


def held_out_images(images: Sequence, fraction: float, seed: int, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted indices of ``images``: ``fraction`` of them (rounded, at least one, never all) validate,
    chosen by a seeded permutation of their order, so the same images and seed give the same split on any machine
    (a resumed run depends on it); then keep_copies_in_training. ``hint``: how to validate otherwise."""
    n = len(images)
    if n < 2:
        raise PolymodalError(f"cannot split {n} image(s) into train and validation; add images, or {hint}")
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = make_rng(seed).permutation(n)
    return keep_copies_in_training(images, np.sort(order[n_val:]), np.sort(order[:n_val]))


def keep_copies_in_training(images, train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) image indices after moving the validation photos that are copies of training photos (the same
    bytes under another name) to training: validating on them makes the metrics, and the epoch kept, optimistic.
    When every validation photo is one, the split stays and a warning says so. A set without copies keeps its
    split exactly (a resumed run depends on it)."""
    from polymodal.training_photos import copies_across

    copies = copies_across([images[i] for i in train], [images[i] for i in val])
    if not copies:
        return train, val
    if len(copies) == len(val):
        log.warning("all %d validation photos are copies of training photos (the same bytes under other names): "
                    "validation metrics and the epoch kept are optimistic; validate on other photos (--val-pairs)",
                    len(val))
        return train, val
    log.warning("%d of the %d validation photos are copies of training photos (the same bytes under other names): "
                "they train instead, so that they do not flatter validation", len(copies), len(val))
    return np.sort(np.concatenate([train, val[copies]])), np.delete(val, copies)
