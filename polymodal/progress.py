"""Progress bars: tqdm's live bar on a terminal; in a log file, a line at most every 30 s and the final state kept.

On a terminal tqdm redraws one line with carriage returns; written to a file (`make demo > log`, CI) every redraw stays,
and a bar closed with leave=False leaves its 0% line behind. Every bar in polymodal comes from here.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), throttled and kept when its output is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if not _is_terminal(stream):
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL_S)
        kwargs["leave"] = True
    return tqdm(iterable, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
