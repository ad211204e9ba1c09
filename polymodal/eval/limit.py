"""`--limit N` of the eval commands: a quick look at a large set, scored on its first N photos in the order the data
lists them (each with all its captions, questions or label rows), as `eval captions` has always read it. The JSON
line says "limit", so the figures are not taken for the whole set's."""

from __future__ import annotations

import logging

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


def add_limit(s, what: str = "evaluate", note: str = "") -> None:
    s.add_argument("--limit", type=int, metavar="N", help=f"{what} only the first N photos{note}")


def check_limit(limit: int | None) -> None:
    """Before the data is read and the model loads: 0 would score nothing, and a negative N drop the last photos."""
    if limit is not None and limit < 1:
        raise PolymodalError(f"--limit must be at least 1, got {limit}")


def first_photos(images, limit: int | None) -> list[int]:
    """The indices of the rows whose photo is one of the first ``limit`` distinct photos (every row without one):
    a photo's other rows stay, wherever they are in the file."""
    if limit is None:
        return list(range(len(images)))
    chosen = set(list(dict.fromkeys(images))[:limit])
    return [i for i, image in enumerate(images) if image in chosen]


def warn_of_fewer_labels(kept: list[str], every: list[str], limit: int | None) -> None:
    """Class folders, or a file sorted by label, list one class's photos first: the first N photos may hold one."""
    if limit is not None and len(set(kept)) < len(set(every)):
        log.warning("--limit %d: those photos hold %d of the set's %d labels (the data lists photos by label?): the "
                    "figures speak for those labels only", limit, len(set(kept)), len(set(every)))
