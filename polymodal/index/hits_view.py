"""A hit list that shows itself in a notebook: Jupyter renders `index.search_text(model, "a dog")` as a grid of
thumbnails with names and scores (``_repr_html_``) rather than a wall of dataclass reprs. Anywhere else a Hits is
the plain list it subclasses: nothing is read until a notebook asks for the picture."""

from __future__ import annotations

import html
from pathlib import Path

from polymodal.data.thumbnails import THUMB_PX, thumbnail_url

SHOWN = 48  # a notebook cell with k=1000 should not embed a thousand photos


class Hits(list):
    """list[Hit], best first, as every search returns it. What list makes of it stays a Hits, in list's order:
    ``hits[:5]``, ``dog_hits + cat_hits`` (the first list, then the second: not re-ranked, as scores of two queries
    do not compare), ``hits * 2``, ``hits.copy()``."""

    def __getitem__(self, item):
        # hits[:5] is a Hits too (list's slice is a plain list): a notebook cell showing the top few gets the photos
        got = super().__getitem__(item)
        return Hits(got) if isinstance(item, slice) else got

    # list's own return plain lists: `hits + more` in a notebook showed a wall of Hit reprs instead of the photos
    def __add__(self, other):
        return Hits(super().__add__(other))

    def __radd__(self, other):  # [hit] + hits (list has no __radd__: a non-list is list's TypeError, as for +)
        if not isinstance(other, list):
            return NotImplemented
        return Hits(list(other) + list(self))

    def __mul__(self, n):
        return Hits(super().__mul__(n))

    __rmul__ = __mul__

    def copy(self):
        return Hits(self)

    def _repr_html_(self) -> str:
        figures = "".join(_figure(hit) for hit in self[:SHOWN])
        more = f", the first {SHOWN} shown" if len(self) > SHOWN else ""
        return (f"<div><p>{len(self)} hit{'' if len(self) == 1 else 's'}{more}</p>"
                f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{figures}</div></div>")


def _figure(hit) -> str:
    name = Path(hit.path).name
    where = hit.path if hit.host is None else f"{hit.path} on {hit.host}"
    thumb = thumbnail_url(hit.path)
    if thumb.startswith("data:"):
        picture = f"<img src='{thumb}' alt='{html.escape(name)}' style='width:{THUMB_PX}px;height:{THUMB_PX}px;" \
                  "object-fit:cover;display:block'>"
    else:  # the file is gone, on another machine, or unreadable: say which instead of a broken image
        picture = f"<div style='width:{THUMB_PX}px;height:{THUMB_PX}px;background:#eef0f3;color:#555;" \
                  f"font-size:12px;display:flex;align-items:center;justify-content:center'>{html.escape(thumb)}</div>"
    return (f"<figure style='margin:0;width:{THUMB_PX}px' title='{html.escape(where)}'>{picture}"
            f"<figcaption style='font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap'>"
            f"<span dir='auto'>{html.escape(name)}</span> {hit.score:.3f}</figcaption></figure>")
