"""Find the image files under a folder, with the stat fields used to spot changes cheaply."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from polymodal.data.images import IMAGE_EXTENSIONS
from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


UNLISTED = "cannot list folder"  # a skipped entry's reason: what was under that folder is unknown, not gone


def unlisted_folders(skipped: list[tuple[str, str]]) -> list[str]:
    """The folders scan_images could not list (permissions, an I/O error): their indexed images must stay."""
    return [path for path, why in skipped if why.startswith(UNLISTED)]


@dataclass(frozen=True)
class ImageFile:
    path: str  # absolute, see canonical_path
    size: int
    mtime_ns: int
    # changes with every write, rename or utime (cp -p, rsync -a, tar -x and touch -r put mtime back, never ctime):
    # a file replaced by one of its size under its old mtime is seen by it. None: not known (made by hand)
    ctime_ns: int | None = None


def canonical_path(path: str | Path) -> str:
    """Absolute path with the folders resolved but the file name kept (a symlinked file stays itself).

    scan_images builds its paths the same way, so paths given later (e.g. to remove) match the stored ones.
    """
    path = Path(path).expanduser()
    return str(path.parent.resolve() / path.name)


def printable_path(path: str) -> str:
    """The path as text that prints and stores anywhere: bytes of a name that is not UTF-8 (an old archive's or a
    Windows share's Latin-1 name reaches Python as surrogate escapes) shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def undecodable_name(path: str) -> tuple[str, str] | None:
    """(printable path, why) for a file name that is not UTF-8, which the index's SQLite cannot store; else None."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return printable_path(path), ("the file name is not UTF-8 text (bytes shown as \\xNN); rename it (e.g. "
                                      "convmv -f latin1 -t utf8)")


def image_file(path: str | Path) -> ImageFile | tuple[str, str]:
    """One image file named by the caller -> its ImageFile, or (path, reason) when it can't be indexed."""
    path = canonical_path(path)
    bad_name = undecodable_name(path)
    if bad_name:
        return bad_name
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        return path, f"not an image file (looked for {', '.join(IMAGE_EXTENSIONS)})"
    try:
        st = os.stat(path)
    except OSError as exc:
        return path, f"cannot stat ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return path, "not a file"
    return ImageFile(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan_images(folder: str | Path) -> tuple[list[ImageFile], list[tuple[str, str]]]:
    """All images under `folder` (recursive, sorted by path) and the (path, reason) of entries that can't be read.

    Extensions match case-insensitively. Hidden files and folders (".name") are ignored: they are mostly
    thumbnails and macOS "._x.jpg" resource forks that only look like images. Symlinked folders are not followed,
    and reported.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise PolymodalError(f"folder not found: {root}; pass an existing folder of images")
    if not root.is_dir():
        raise PolymodalError(f"{root} is not a folder; pass a folder of images")
    root = root.resolve()

    files: list[ImageFile] = []
    skipped: list[tuple[str, str]] = []

    def on_error(exc: OSError) -> None:
        skipped.append((str(exc.filename), f"{UNLISTED} ({exc.strerror})"))

    # followlinks=False: a symlink loop can't hang the scan, and every parent folder is a real folder, so
    # root / relative path is already canonical (and under root, where update() looks for the rows to compare).
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        skipped += [_linked_folder(root, os.path.join(dirpath, d)) for d in dirnames
                    if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            bad_name = undecodable_name(path)
            if bad_name:
                skipped.append(bad_name)
                continue
            try:
                st = os.stat(path)  # follows a symlinked file, so its target's changes are seen
            except OSError as exc:
                skipped.append((path, f"cannot stat ({exc.strerror})"))
                continue
            if not stat.S_ISREG(st.st_mode):  # a FIFO named x.jpg would block the hash's open() for ever
                skipped.append((path, "not a file"))
                continue
            files.append(ImageFile(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns))

    if not files:
        why = f"; skipped {skipped[0][0]}: {skipped[0][1]}" if skipped else ""  # e.g. all were in a linked folder
        raise PolymodalError(
            f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}){why}; pass a folder that has some"
        )
    files.sort(key=lambda f: f.path)
    log.info("found %d images under %s", len(files), root)
    return files, skipped


def _linked_folder(root: Path, path: str) -> tuple[str, str]:
    """(path, reason) for a symlinked folder the scan does not follow, saying how to index what it points at."""
    target = Path(os.path.realpath(path))
    if target.is_relative_to(root):
        return path, f"symlinked folder, not followed: its target {target} is indexed under its own path"
    return path, f"symlinked folder, not followed: to index it, name its target {target} too"


def file_sha256(path: str | Path) -> str:
    """Content hash, read in 1 MiB chunks so big files don't load whole."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f) -> str:
    """file_sha256 of a file already open for reading, from where it stands."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
