"""`eval ... --page FILE.html` (and `caption --page`): an evaluation to look at, where the JSON line and --out's
items only say it. One self-contained file (each photo's JPEG thumbnail inlined once, in its style sheet; no script,
nothing fetched: it opens from disk, offline):
the figures line at the top, then the items, the model's failures first, worst first, each with its photo(s), the
question, query or caption, the model's answer or top hits, and the truth."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from polymodal.cache import atomic_write_bytes
from polymodal.data.thumbnails import THUMB_PX, thumbnail_urls

SHOWN = 200  # items on the page: each brings up to four ~5 KB thumbnails; --out has every item

# what a failure is, per command (the page's headline counts them)
FAILURE = {"retrieval": "captions whose photo was not the top hit (text->image)",
           "zeroshot": "photos whose label was not the top class",
           "images": "photos whose nearest photo has another label",
           "vqa": "questions not answered right (score below 1)",
           "captions": "photos"}


def write_page(path, command: str, line: dict, items: list[dict]) -> None:
    """The page of ``command``'s ``items`` (as --out writes them) under its JSON ``line``, written atomically."""
    if command == "retrieval":  # the text queries: a photo's best caption rank says less about what went wrong
        items = [item for item in items if item.get("query") == "text"]
    ranked = command == "captions" and any("cider" in item for item in items)
    if ranked:  # the lowest CIDEr-D first (each photo's, under the set's word weights); unreadable photos last
        items = sorted(items, key=lambda item: item.get("cider", float("inf")))
    failed, right, unscored = _ordered(command, items)
    shown = (failed + right + unscored)[:SHOWN]
    labels = {item["image"]: item.get("label") for item in items}  # eval images: its hits' labels
    names: list = []  # the photos the rows show: read first, a Parquet file's in row order (thumbnail_urls)
    for item in shown:
        _ROWS[command](item, lambda name, *_: names.append(name) or "", labels)
    thumbs = thumbnail_urls(names)
    # a photo that recurs (its several captions, a common nearest hit) is inlined once, as a CSS class: inlined in
    # each place, a retrieval page at the cap was ~4.4 MB
    ids = {name: f"p{n}" for n, name in enumerate(dict.fromkeys(names))}

    def photo(name: str, note: str = "", mark: str = "") -> str:
        return _photo(name, thumbs[name], ids[name], note, mark)

    rows = "".join(_ROWS[command](item, photo, labels) for item in shown)
    pictures = "".join(f".{ids[name]}{{background-image:url({url})}}" for name, url in thumbs.items()
                       if url.startswith("data:"))
    if command == "caption":  # `polymodal caption`: the photos as given, nothing to score them against
        headline = f"{len(right):,} captioned photos, in the order given"
    elif command == "captions":  # below MIN_CIDER_PHOTOS no CIDEr-D is scored: as the data lists them
        headline = f"{len(right):,} captioned photos, " + ("the lowest CIDEr-D first" if ranked else
                                                           "in the order of the data (too few for CIDEr-D)")
    else:
        headline = f"{len(failed):,} of {len(failed) + len(right):,} {FAILURE[command]}, worst first"
    if unscored:
        headline += f"; {len(unscored):,} {'unreadable' if command == 'caption' else 'not scored'} (last)"
    more = len(items) - len(shown)
    every = "--json lists every caption" if command == "caption" else "--out FILE.jsonl writes every item"
    note = f"<p>The first {len(shown):,} items; {more:,} more not shown ({every}).</p>" if more else ""
    title = f"polymodal {'' if command == 'caption' else 'eval '}{command}: {line.get('model', '')}"
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style><style>{pictures}</style></head><body><h1>{escape(title)}</h1>"
            f"<pre class='figures'>{escape(json.dumps(line))}</pre><p class='headline'>{escape(headline)}</p>{note}"
            f"{rows}</body></html>")
    atomic_write_bytes(Path(path), page.encode("utf-8"))


def _ordered(command: str, items: list[dict]) -> tuple[list, list, list]:
    """(failures, worst first; the others right, as they come; the items not scored: an unreadable photo, a label
    with one photo)."""
    failed, right, unscored = [], [], []
    for item in items:
        bad = _badness(command, item)
        (unscored if bad is None else failed if bad > (0,) else right).append((bad, item))
    failed.sort(key=lambda pair: pair[0], reverse=True)  # (stable: equal ones as they come)
    return [i for _, i in failed], [i for _, i in right], [i for _, i in unscored]


def _badness(command: str, item: dict) -> tuple | None:
    """How wrong the model was on ``item``: (0,) right, larger worse; None when not scored."""
    if command == "vqa":  # a confident wrong answer before a hesitant one
        return None if "score" not in item else (0,) if item["score"] >= 1 else \
            (1 - item["score"], item["confidence"])
    if command in ("captions", "caption"):
        return None if "caption" not in item else (0,)
    if "rank" not in item:
        return None
    # eval images: of two equal ranks, the one whose other same-label photos come later (lower MAP@R) is worse
    return (item["rank"] - 1, -item.get("map_r", 0.0)) if item["rank"] > 1 else (0,)


def _photo(name: str, url: str, picture: str, note: str = "", mark: str = "") -> str:
    """A thumbnail (``url``, inlined once as the class ``picture``) with its file name (and ``note``) under it;
    ``mark`` "truth" or "wrong" frames it."""
    base = Path(name).name or name
    picture = f"<div class='img {picture}' role='img' aria-label='{escape(base)}'></div>" if url.startswith("data:") \
        else f"<div class='none'>{escape(url)}</div>"  # gone or unreadable: why, not a broken image
    caption = escape(base) + (f"<br>{escape(note)}" if note else "")
    return (f"<figure class='{mark}' title='{escape(name)}'>{picture}"
            f"<figcaption dir='auto'>{caption}</figcaption></figure>")


def _item(verdict: str, bad: bool | None, photos: str, facts: list[tuple[str, object]], state: str = "") -> str:
    """One item: the verdict (red when ``bad``, grey when None: not scored; ``state`` "measured": a score that is
    neither right nor wrong, in the text's colour), its photos, then its texts."""
    lines = "".join(f"<dt>{escape(k)}</dt><dd dir='auto'>{_text(v)}</dd>" for k, v in facts if v is not None)
    state = f" {state}" if state else " bad" if bad else " unscored" if bad is None else ""
    return (f"<section class='item{state}'><div class='verdict'>{escape(verdict)}</div>"
            f"<div class='photos'>{photos}</div><dl>{lines}</dl></section>")


def _text(value) -> str:
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li dir='auto'>{escape(str(v))}</li>" for v in value) + "</ul>"
    return escape(str(value))


def _error(item: dict, photo, facts) -> str:
    return _item("not scored", None, photo(item["image"]), [*facts, ("why", item.get("error") or item.get("skipped"))])


def _retrieval(item, photo, labels) -> str:
    if "rank" not in item:
        return _error(item, photo, [("caption", item["caption"])])
    # which hit is its photo said in words too: a frame's colour alone is lost on a red-green colour-blind reader,
    # in a high-contrast theme and to a screen reader
    hits = "".join(photo(name, f"hit {n}: its photo", "truth") if name == item["image"] else
                   photo(name, f"hit {n}", "wrong")
                   for n, name in enumerate(item.get("top", []), 1))
    truth = photo(item["image"], "its photo", "truth")
    return _item("right" if item["rank"] == 1 else f"rank {item['rank']}", item["rank"] > 1,
                 truth + "<span class='sep'></span>" + hits,
                 [("caption", item["caption"]), ("its photo's rank", item["rank"])])


def _zeroshot(item, photo, labels) -> str:
    if "rank" not in item:
        return _error(item, photo, [("label", item["label"])])
    return _item("right" if item["rank"] == 1 else f"rank {item['rank']}", item["rank"] > 1, photo(item["image"]),
                 [("label", item["label"]), ("predicted", item["predicted"]), ("label's rank", item["rank"])])


def _images(item, photo, labels) -> str:
    if "rank" not in item:
        return _error(item, photo, [("label", item["label"])])
    hits = "".join(photo(name, f"{n}. {labels.get(name)}",
                             "truth" if labels.get(name) == item["label"] else "wrong")
                   for n, name in enumerate(item.get("top", [item["nearest"]]), 1))
    query = photo(item["image"], f"query: {item['label']}", "")
    return _item("right" if item["rank"] == 1 else f"rank {item['rank']}", item["rank"] > 1,
                 query + "<span class='sep'></span>" + hits,
                 [("label", item["label"]), ("nearest photo's label", item["nearest_label"]),
                  ("first photo of its label at", item["rank"]), ("MAP@R", item.get("map_r"))])


def _vqa(item, photo, labels) -> str:
    if "score" not in item:
        return _error(item, photo, [("question", item["question"]), ("truth", item["answer"])])
    return _item("right" if item["score"] >= 1 else f"score {item['score']:.2f}", item["score"] < 1,
                 photo(item["image"]),
                 [("question", item["question"]), ("predicted", f"{item['predicted']} ({item['confidence']:.2f})"),
                  ("truth", item["answer"]), ("choices", item.get("choices"))])


def _captions(item, photo, labels) -> str:
    if "caption" not in item:
        return _error(item, photo, [])
    # a caption is neither right nor wrong: its score in the text's colour, not in the grey of "not scored"
    return _item("" if "cider" not in item else f"CIDEr-D {item['cider']:.2f}", None, photo(item["image"]),
                 [("generated", item["caption"] or "(empty)"), ("references", item.get("references"))], "measured")


_ROWS = {"retrieval": _retrieval, "zeroshot": _zeroshot, "images": _images, "vqa": _vqa, "captions": _captions,
         "caption": _captions}

# frames inside the thumbnail's 128 px (outside it, neighbouring hits' frames touched); a miss's dashed and a gone
# photo's grey box framed too: truth and miss told apart without colour
_STYLE = f"""body{{font:14px system-ui,sans-serif;margin:16px;color:#222}}h1{{font-size:18px}}
.figures{{white-space:pre-wrap;word-break:break-all;background:#f4f5f7;padding:8px;font-size:12px}}
.headline{{font-weight:600}}
.item{{display:flex;gap:12px;padding:8px 0;border-top:1px solid #ddd;align-items:flex-start}}
.verdict{{width:72px;flex:none;font-weight:600;color:#2a7}}.bad .verdict{{color:#c33}}.unscored .verdict{{color:#777}}
.measured .verdict{{color:inherit}}
.photos{{display:flex;gap:6px;flex:none}}.sep{{width:10px}}figure{{margin:0;width:{THUMB_PX}px}}
.img,.none{{width:{THUMB_PX}px;height:{THUMB_PX}px;display:block;border:3px solid transparent;
box-sizing:border-box}}
.img{{background:center/cover no-repeat;-webkit-print-color-adjust:exact;print-color-adjust:exact}}
.none{{background:#eef0f3;color:#555;font-size:12px;display:flex;align-items:center;justify-content:center;
text-align:center}}figure.truth>div{{border-color:#2a7}}figure.wrong>div{{border-color:#c33;border-style:dashed}}
figcaption{{font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}}
dl{{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:2px 10px}}dt{{color:#666}}dd{{margin:0}}
ul{{margin:0;padding-left:16px}}"""
