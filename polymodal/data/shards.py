"""WebDataset-style tar shards of image-caption samples, for data that does not fit in memory.

A sample is the run of consecutive tar members that share a key (the name up to the first dot of the base name):
`000000123.jpg` + `000000123.txt` (and/or `000000123.json` with a "caption" or "captions" key). Images may be
.jpg/.jpeg/.png/.webp/.bmp/.gif. A .txt holds one caption per non-empty line; `write_shards` stores one sample
per unique image with all of its captions, so a training stream never shows the same image twice in an epoch.

- `write_shards(pairs, out_dir, samples_per_shard)` writes shards atomically (temporary file, then rename).
- `iter_samples(patterns)` streams their samples with `tarfile` in "r|*" mode; torch-free.

Patterns are paths, globs (`shards/*.tar`), brace patterns (`shards-{000..009}.tar`, `{a,b}.tar`), folders of
shards, or several of these joined by "::" or given as a list.
"""

from __future__ import annotations

import atexit
import glob
import io
import json
import logging
import os
import re
import tarfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from polymodal.cache import temp_beside
from polymodal.data.images import IMAGE_EXTENSIONS, load_image
from polymodal.data.jsonl import not_unicode
from polymodal.data.parquet_rows import is_parquet, read_image_bytes
from polymodal.data.visible import is_blank
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
CAPTION_EXTS = ("txt", "caption", "text")  # a sample's caption file, first found first (else its .json's)
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key up to the first dot of the base name
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


# ---------------------------------------------------------------------------------------------- patterns


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: `a-{000..003}.tar` -> a-000.tar .. a-003.tar; `{x,y}.tar` -> x.tar, y.tar.

    Numeric ranges keep zero padding (`{8..10}` -> 8 9 10, `{08..10}` -> 08 09 10) and may count down.
    A brace group with neither a comma nor a range is kept literally.
    """
    pos = 0
    while True:
        m = _BRACE.search(pattern, pos)
        if m is None:
            return [pattern]
        alternatives = _brace_alternatives(m.group(1))
        if alternatives is not None:
            break
        pos = m.start() + 1
    out: list[str] = []
    for alt in alternatives:
        for s in expand_braces(pattern[: m.start()] + alt + pattern[m.end() :]):
            if s not in out:
                out.append(s)
    return out


def _brace_alternatives(body: str) -> list[str] | None:
    r = _RANGE.match(body)
    if r:
        a, b = r.group(1), r.group(2)
        lo, hi = int(a), int(b)
        padded = any(len(x.lstrip("-")) > 1 and x.lstrip("-").startswith("0") for x in (a, b))
        width = max(len(a), len(b)) if padded else 0
        step = 1 if hi >= lo else -1
        return [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    if "," in body:
        return body.split(",")
    return None


def is_tar(path: str | Path) -> bool:
    return str(path).lower().endswith(TAR_SUFFIXES)


def looks_like_pattern(text: str) -> bool:
    """True when `text` is a glob, brace or "::"-joined shard pattern rather than one plain path."""
    return "::" in text or any(c in text for c in "*?[") or bool(_BRACE.search(text))


def expand_shards(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard patterns -> the existing tar files they name, in order (braces in order, globs sorted), deduplicated."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    parts = [p for pattern in patterns for p in str(pattern).split("::") if p]
    if not parts:
        raise PolymodalError(
            "no shard pattern given; pass tar files, a glob like 'shards/*.tar' or 'shards-{000..009}.tar'"
        )
    out: dict[Path, None] = {}
    for part in parts:
        for expanded in expand_braces(os.path.expanduser(part)):
            if any(c in expanded for c in "*?["):
                found = [Path(p) for p in sorted(glob.glob(expanded)) if is_tar(p) and Path(p).is_file()]
                if not found:
                    raise PolymodalError(f"no tar shards match {expanded!r}; check the pattern and the folder")
            elif Path(expanded).is_dir():
                found = sorted(p for p in Path(expanded).iterdir() if is_tar(p) and p.is_file())
                if not found:
                    raise PolymodalError(f"folder {expanded} has no .tar shards; write some with write_shards")
            elif Path(expanded).is_file():
                if not is_tar(expanded):
                    raise PolymodalError(f"{expanded} is not a tar shard; shards end with {', '.join(TAR_SUFFIXES)}")
                found = [Path(expanded)]
            else:
                raise PolymodalError(f"shard not found: {expanded} (from {part!r}); check the path or pattern")
            for p in found:
                out.setdefault(p.resolve(), None)
    return list(out)


# ---------------------------------------------------------------------------------------------- image references


def tar_ref(shard: str | Path, member: str) -> str:
    """A string naming one member of a tar shard: "<shard path>#<member name>" (what `Pair.image` holds)."""
    return f"{shard}#{member}"


def split_tar_ref(ref: Any) -> tuple[Path, str] | None:
    """"<shard>#<member>" -> (shard path, member name); None for anything that is not a tar reference."""
    if not isinstance(ref, str) or "#" not in ref:
        return None
    for i, c in enumerate(ref):
        if c == "#" and (is_tar(ref[:i]) or is_parquet(ref[:i])):  # a Parquet file's row is "<file>#<row>" alike
            # a photo named so ("x.tar#1.jpg", a file path as a VQA file or a string gives it) is that file
            return None if os.path.isfile(ref) else (Path(ref[:i]), ref[i + 1 :])
    return None


_TAR_CACHE: OrderedDict[tuple[int, str], tuple[tarfile.TarFile, dict[str, tarfile.TarInfo], tuple]] = OrderedDict()
_TAR_LOCK = threading.Lock()
_TAR_CACHE_SIZE = 16


@atexit.register
def _close_cached_tars() -> None:
    """This process's cached shard files are closed at exit (left to the garbage collector, each open one was a
    ResourceWarning under `python -X dev`)."""
    with _TAR_LOCK:
        while _TAR_CACHE:
            (pid, _), (tf, _, _) = _TAR_CACHE.popitem()
            if pid == os.getpid():
                tf.close()


def _file_identity(path: str | Path) -> tuple | None:
    """(inode, size, mtime) of a file, None when it is missing: a rewritten shard (write_shards renames a new file
    onto it) gets a new identity, so a cached open file of the old one is not reused."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_tar_member(shard: str | Path, member: str) -> bytes:
    """Bytes of one member of a tar file (random access; open files cached per process, reopened when the file
    changed since). A Parquet file's "member" is a row number (parquet_rows)."""
    if is_parquet(shard):
        return read_image_bytes(shard, member)
    key = (os.getpid(), str(shard))  # per process: a forked DataLoader worker must not share a file offset
    identity = _file_identity(shard)
    with _TAR_LOCK:
        entry = _TAR_CACHE.get(key)
        if entry is not None and entry[2] != identity:  # rewritten or removed since it was opened
            del _TAR_CACHE[key]
            entry[0].close()
            entry = None
        if entry is None:
            if identity is None or not Path(shard).is_file():
                raise PolymodalError(f"shard not found: {shard}; pass an existing tar file")
            try:
                tf = tarfile.open(shard, "r:*")
                entry = (tf, _member_index(tf), identity)
            except _READ_ERRORS as exc:
                raise PolymodalError(f"not a readable tar shard: {shard} ({exc})") from exc
            _TAR_CACHE[key] = entry
            while len(_TAR_CACHE) > _TAR_CACHE_SIZE:
                (pid, _), (old, _, _) = _TAR_CACHE.popitem(last=False)
                if pid == os.getpid():
                    old.close()
        else:
            _TAR_CACHE.move_to_end(key)
        tf, index, _ = entry
        info = index.get(member)
        if info is None:
            raise PolymodalError(f"{shard} has no member {member!r}; the shard changed since it was listed")
        try:
            return tf.extractfile(info).read()
        except _READ_ERRORS as exc:
            raise PolymodalError(f"cannot read {member} from {shard} ({exc})") from exc


def _member_index(tf: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Name -> member of the files of an open tar file, up to where its data ends: the samples `iter_samples` lists
    before a truncated or corrupt tail stay readable (getmembers() would refuse the whole shard)."""
    index: dict[str, tarfile.TarInfo] = {}
    try:
        for member in tf:
            if member.isfile():
                index.setdefault(member.name, member)  # a repeated name: the first, as iter_samples keeps it
    except _READ_ERRORS as exc:
        log.info("%s: members after %d files unreadable (%s)", tf.name, len(index), exc)
    return index


def image_bytes(ref: str | Path) -> bytes:
    """Encoded bytes of an image given as a file path or a tar reference."""
    split = split_tar_ref(ref)
    if split is not None:
        return read_tar_member(*split)
    path = Path(ref)
    if not path.is_file():
        raise PolymodalError(f"image not found: {path}; pass an existing image file")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------- writing


def write_shards(
    pairs: Any, out_dir: str | Path, samples_per_shard: int = 1000, prefix: str = "shard"
) -> list[Path]:
    """Write pairs (a PairSet or Pair list) as tar shards `<prefix>-000000.tar`...; one sample per unique image.

    Each sample is `<key>.<image ext>` (the original encoded bytes), `<key>.txt` (its captions, one per line) and
    `<key>.json` ({"caption": first, "captions": all, "source": original file name, and "negatives": per caption
    its hard-negative captions, when any pair has some}). Keys are global sample
    numbers, unique across shards. Each shard is written to a temporary file and renamed when complete.
    """
    if samples_per_shard < 1:
        raise PolymodalError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    items = getattr(pairs, "pairs", pairs)
    groups: dict[Any, list[str]] = {}
    negatives: dict[Any, list[list[str]]] = {}  # per image, aligned with its captions
    for pair in items:
        caption = clean_caption(str(pair.caption))  # as reading cleans it: a caption it drops would unpair negatives
        if caption:
            groups.setdefault(pair.image, []).append(caption)
            negatives.setdefault(pair.image, []).append(list(getattr(pair, "negatives", ())))
    if not groups:
        raise PolymodalError("write_shards got no pairs; pass a PairSet or a non-empty list of Pair")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = list(groups.items())
    n_shards = -(-len(samples) // samples_per_shard)
    shard_width = max(6, len(str(n_shards - 1)))
    key_width = max(9, len(str(len(samples) - 1)))
    written = []
    for s in range(n_shards):
        final = out_dir / f"{prefix}-{s:0{shard_width}d}.tar"
        chunk = samples[s * samples_per_shard : (s + 1) * samples_per_shard]
        fd, tmp = temp_beside(final)
        try:
            with os.fdopen(fd, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                    for k, (image, captions) in enumerate(chunk, start=s * samples_per_shard):
                        key = f"{k:0{key_width}d}"
                        ext, data = _encoded_image(image)
                        meta = {"caption": captions[0], "captions": captions, "source": _source_name(image)}
                        if any(negatives[image]):
                            meta["negatives"] = negatives[image]
                        _add(tf, f"{key}.{ext}", data)
                        _add(tf, f"{key}.txt", "\n".join(captions).encode("utf-8"))
                        _add(tf, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(final)
    stale = sorted(set(out_dir.glob(f"{prefix}-*.tar")) - set(written))
    if stale:
        log.warning("%s also holds %d older %s-*.tar shards (e.g. %s) that a folder or glob would read too",
                    out_dir, len(stale), prefix, stale[0].name)
    log.info("wrote %d samples to %d shards in %s", len(samples), len(written), out_dir)
    return written


def _encoded_image(image: Any) -> tuple[str, bytes]:
    split = split_tar_ref(image)
    name = split[1] if split else str(image)
    m = _KEY_EXT.match(Path(name).name)
    ext = m.group(2).lower() if m else ""
    data = image_bytes(image)
    if ext not in IMAGE_EXTS:  # a format readers would not recognise: store it as PNG
        buf = io.BytesIO()
        load_image(data).save(buf, format="PNG")
        ext, data = "png", buf.getvalue()
    return ext, data


def _source_name(image: Any) -> str:
    split = split_tar_ref(image)
    name = Path(split[1]).name if split else Path(image).name
    # a file name that is not UTF-8 (Latin-1 "caf\xe9.jpg") reaches Python as a surrogate escape, which the .json
    # cannot encode: spelled out as "caf\udce9.jpg" rather than failing the whole write
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the same pairs give the same bytes
    tf.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class ShardSample:
    shard: Path
    key: str
    image_name: str  # the tar member holding the image
    image: bytes | None  # encoded bytes (None when read with read_images=False)
    captions: list[str]
    negatives: list[tuple[str, ...]] = field(default_factory=list)  # per caption (the .json's "negatives")


def iter_samples(
    patterns: Any, *, read_images: bool = True, skipped: list[tuple[str, str]] | None = None
) -> Iterator[ShardSample]:
    """Stream the samples of shards (tarfile "r|*": sequential, no seeking). Broken samples and unreadable shard
    tails are logged, appended to `skipped` as (location, reason) and passed over."""
    yield from _iter_paths(expand_shards(patterns), read_images, skipped)


def _iter_paths(shards: Iterable[Path], read_images: bool, skipped: list | None) -> Iterator[ShardSample]:
    for shard in shards:
        yield from _iter_one_shard(Path(shard), read_images, skipped)


class SummarisedSkips(list):
    """A `skipped` list whose reader reports the skips once (count and first, as report_skipped does): each is then
    logged at INFO (-v) instead of a warning per sample (200 samples without captions gave 201 lines)."""


def note_skipped(skipped: list | None, location: str, reason: str) -> None:
    quiet = isinstance(skipped, SummarisedSkips)
    log.log(logging.INFO if quiet else logging.WARNING, "skipping %s: %s", location, reason)
    if skipped is not None:
        skipped.append((location, reason))


def _iter_one_shard(shard: Path, read_images: bool, skipped: list | None) -> Iterator[ShardSample]:
    current: str | None = None
    files: dict[str, tuple[str, bytes | None]] = {}
    seen: set[str] = set()  # keys of earlier samples: a repeat's "<shard>#<member>" would read the first's image
    incomplete: set[str] = set()  # keys of samples that lacked their image or caption
    start = len(skipped) if skipped is not None else 0
    try:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if base.startswith(".") or base.startswith("__"):
                    continue
                m = _KEY_EXT.match(member.name)
                if m is None:
                    note_skipped(skipped, f"{shard}:{member.name}", "member name has no extension")
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if key != current:
                    if current is not None:
                        sample = _make_sample(shard, current, files, skipped, seen)
                        if sample is not None:
                            yield sample
                        elif not set(files) & set(IMAGE_EXTS) or not set(files) & {*CAPTION_EXTS, "json"}:
                            incomplete.add(current)
                    if key in incomplete:  # the rest of a sample skipped as lacking it: the tar's order is wrong
                        _members_apart(shard, key, skipped, start)
                        return
                    current, files = key, {}
                wanted = read_images or ext not in IMAGE_EXTS
                data = tf.extractfile(member).read() if wanted else None
                files[ext] = (member.name, data)
    except _READ_ERRORS as exc:
        where = f"{shard}:{current}" if current else str(shard)
        note_skipped(skipped, where, f"unreadable tar data, rest of shard skipped ({exc})")
        return
    if current is not None:
        sample = _make_sample(shard, current, files, skipped, seen)
        if sample is not None:
            yield sample


def _members_apart(shard: Path, key: str, skipped: list | None, start: int) -> None:
    """A shard whose samples' files are apart (`tar -cf x.tar folder/` lists files in directory order, `*.jpg *.txt`
    all images first): each image was skipped as having no caption and each caption as having no image, which
    named the symptom (a .txt the user can see in `tar -tf`), and the few samples whose files fell together by
    chance were all that was read. One skip naming the cause replaces this shard's."""
    if skipped is not None:
        del skipped[start:]
    note_skipped(skipped, str(shard), f"the files of sample {key!r} are not next to each other (a tar of a folder "
                                      "lists its files in directory order), so the rest of the shard is skipped; "
                                      "a shard keeps each sample's files together: write it with `tar --sort=name "
                                      "-cf`")


def _make_sample(shard: Path, key: str, files: dict, skipped: list | None,
                 seen: set | None = None) -> ShardSample | None:
    location = f"{shard}:{key}"
    if seen is not None:
        if key in seen:
            note_skipped(skipped, location, "the key repeats an earlier sample's in this shard (its members share "
                                            "their names); give every sample its own key")
            return None
        seen.add(key)
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if image_ext is None:
        note_skipped(skipped, location, f"no image ({'/'.join(IMAGE_EXTS)}) among {sorted(files)}")
        return None
    try:
        meta = _meta(files)
        captions = _captions(files, meta)
    except (ValueError, UnicodeDecodeError) as exc:
        note_skipped(skipped, location, f"unreadable caption ({exc.__class__.__name__}: {exc})")
        return None
    if not captions:
        note_skipped(skipped, location, "no caption (.txt lines or .json 'caption'/'captions')")
        return None
    negatives = _negatives(meta, captions)
    broken = not_unicode(captions, "caption") or not_unicode([list(n) for n in negatives], "negatives")
    if broken:  # a .json's "\ud83d" escape: no tokenizer takes it (a training run ended with a traceback)
        note_skipped(skipped, location, broken)
        return None
    name, data = files[image_ext]
    return ShardSample(shard, key, name, data, captions, negatives)


def _meta(files: dict) -> dict:
    """The sample's .json object ({} without one)."""
    if "json" not in files:
        return {}
    meta = json.loads(files["json"][1].decode("utf-8-sig"))
    if not isinstance(meta, dict):
        raise ValueError("the .json is not an object")
    return meta


def _negatives(meta: dict, captions: list[str]) -> list[tuple[str, ...]]:
    """The .json's "negatives": a list per caption (as write_shards writes them), or one text or list of texts for
    every caption of the sample. A negative equal to its caption is dropped."""
    value = meta.get("negatives")
    clean = lambda texts: [t for t in (" ".join(x.split()) for x in texts if isinstance(x, str)) if t]  # noqa: E731
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        # per caption; if blank captions were dropped the lists no longer line up: none rather than wrong ones
        per_caption = [clean(v) for v in value] if len(value) == len(captions) else [[]] * len(captions)
    else:
        shared = clean([value] if isinstance(value, str) else value if isinstance(value, list) else [])
        per_caption = [shared] * len(captions)
    return [tuple(n for n in negs if n != c) for c, negs in zip(captions, per_caption)]


def clean_caption(text: str) -> str:
    """A caption with its runs of whitespace made one space; "" when nothing in it shows: zero-width characters
    are no whitespace to str.split, but a tokenizer finds no word in them, and a caption of them alone trained a
    captioner to end at once and counted as a reference that no caption matches."""
    text = " ".join(text.split())
    return "" if is_blank(text) else text


def _captions(files: dict, meta: dict) -> list[str]:
    listed = meta.get("captions")
    if isinstance(listed, list) and listed:
        return [c for c in (clean_caption(x) for x in listed if isinstance(x, str)) if c]  # not null, 5
    for ext in CAPTION_EXTS:
        if ext in files:
            return [c for c in (clean_caption(line) for line in files[ext][1].decode("utf-8-sig").splitlines()) if c]
    for name in ("caption", "text"):
        if isinstance(meta.get(name), str) and (caption := clean_caption(meta[name])):
            return [caption]
    return []

