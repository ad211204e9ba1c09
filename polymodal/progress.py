"""Progress bars: tqdm's live bar on a terminal or in a notebook (its text bar, once a second, in a kernel without
ipywidgets); in a log file, a line at most every 30 s and the final state kept.

On a terminal tqdm redraws one line with carriage returns; written to a file (`make demo > log`, CI) every redraw stays,
and a bar closed with leave=False leaves its 0% line behind. Every bar in polymodal comes from here.
"""
from __future__ import annotations

import sys
import warnings

with warnings.catch_warnings():  # Jupyter without ipywidgets: tqdm.auto falls back to the text bar, which works, after
    # "IProgress not found. Please update jupyter and ipywidgets" on stderr, a fault polymodal's user need not fix
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
KERNEL_INTERVAL_S = 1.0  # a headless run (papermill, nbclient) saves each redraw as an output: 10 a second at 0.1 s
# In Jupyter tqdm.auto gives a widget bar (and stderr is no terminal there): that one is left as it is
_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), throttled and kept when its output is a file (not a terminal, not a notebook or its
    widget). Per-step ``set_postfix`` calls should pass refresh=False: a refresh ignores the throttle."""
    stream = kwargs.get("file") or sys.stderr
    if not _NOTEBOOK and _is_kernel_stream(stream):
        kwargs.setdefault("mininterval", KERNEL_INTERVAL_S)
    elif not _NOTEBOOK and not _is_terminal(stream):
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), LOG_INTERVAL_S)
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", 10.0), LOG_INTERVAL_S)  # its monitor thread's redraws
        kwargs["leave"] = True
    return tqdm(iterable, **kwargs)


def batch_progress(starts, n: int, batch_size: int, **kwargs):
    """Yields ``starts`` (first rows of batches of ``batch_size`` out of ``n`` rows) while a bar counts the rows
    done, not the batches: "caching text features 9/9 [1.63s/it]" said neither how many texts nor how fast."""
    starts = list(starts)
    with progress_bar(total=sum(min(batch_size, n - i) for i in starts), **kwargs) as bar:
        for i in starts:
            yield i
            bar.update(min(batch_size, n - i))


def _is_kernel_stream(stream) -> bool:
    """A Jupyter kernel's stderr without ipywidgets (tqdm.auto then falls back to the text bar): the notebook redraws
    the bar's line in place as a terminal does, so 30 s between redraws left it at 0% through a whole cell."""
    return type(stream).__module__.startswith("ipykernel.")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
