"""The context line every benchmark prints first: which polymodal (version, commit), Python and torch, how many
torch threads, which OpenMP wait policy, on which CPU and when. Figures measured at different commits, settings or
machines can then be told apart (and compared only when they match).

    from run_context import announce      # the script's folder is on sys.path
    def main(argv=None):
        args = ap.parse_args(argv)
        announce(__file__)                 # after the script has set its torch threads, if it does

It prints only when the calling script is the program being run (`python benchmarks/NAME.py`): a test, or another
script, calling its main() in-process gets no extra line, and a run prints one. It never fails a run: whatever it
cannot find out (no git, not a checkout, no /proc/cpuinfo) is null.

Importing this module is cheap and imports no torch: scripts set OMP_WAIT_POLICY before torch loads, and torch is
imported only when announce() or context() is called.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_DATA = CHECKOUT.parent / "shared" / "data"  # the data sets the benchmarks read by default (see its README.md)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError, ValueError):  # no git, a hung one, ...
        return None
    return done.stdout if done.returncode == 0 else None


def _commit() -> tuple[str | None, bool | None]:
    """(short commit, uncommitted changes to tracked files) of the checkout holding benchmarks/, else (None, None)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit or not commit.strip():
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def _cpu() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)  # the last CPU's fields
    except OSError:
        fields = {}
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    for key in ("model name", "Hardware", "Processor", "cpu"):  # x86, some ARM, older ARM, POWER
        if fields.get(key):
            return fields[key]
    return platform.processor() or None


def context(script: str, **extra) -> dict:
    """The context record of a run of ``script`` (a path or a name), plus ``extra`` fields (e.g. threads a script
    gives onnxruntime)."""
    record: dict = {"context": Path(script).name}
    try:
        import polymodal

        record["polymodal"] = getattr(polymodal, "__version__", None)
    except Exception:  # noqa: BLE001 -- a broken import is the benchmark's to report, not this line's
        record["polymodal"] = None
    record["commit"], record["dirty"] = _commit()
    record["python"] = platform.python_version()
    try:
        import torch

        record["torch"], record["threads"] = torch.__version__, torch.get_num_threads()
    except Exception:  # noqa: BLE001
        record["torch"], record["threads"] = None, None
    record["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    try:
        record["cpu"] = _cpu()
    except Exception:  # noqa: BLE001
        record["cpu"] = None
    record["cores"] = os.cpu_count()
    record["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record.update(extra)
    return record


def _is_program(script: str) -> bool:
    """Whether ``script`` is the file this interpreter was started on (not a module a test or script loaded)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    try:
        return bool(main) and Path(main).resolve() == Path(script).resolve()
    except (OSError, ValueError):
        return False


def announce(script: str, **extra) -> dict | None:
    """Prints the context line of a run of ``script`` (pass the script's ``__file__``) on stdout and returns it, when
    that script is the program being run; else prints nothing and returns None. Never raises."""
    try:
        if not _is_program(script):
            return None
        record = context(script, **extra)
        print(json.dumps(record), flush=True)
        return record
    except Exception as exc:  # noqa: BLE001 -- never fail the benchmark over its context line
        print(f"run_context: no context line ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def counts(text: str) -> list[int]:
    """An argparse type: "1,8,32" -> [1, 8, 32]; anything else is argparse's one-line usage error, not a traceback."""
    import argparse

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers joined by commas, e.g. 1,8,32; got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"each number must be at least 1, got {text!r}")
    return values
