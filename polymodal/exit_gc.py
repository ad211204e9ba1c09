"""Process exit without the interpreter's last garbage collections over a heap the OS frees anyway.

With torch and a model loaded (200k+ tracked objects) Python's finalization spent 0.5-1 s in full collections
after the last atexit handler: most of the 1.1-1.5 s a stopped `polymodal serve` took to exit when idle. Objects
still reachable then are not collected by those passes anyway; what they could collect is garbage in reference
cycles, whose finalizers Python does not promise to run at exit. Nothing of polymodal's waits for them: its files
are written and renamed, and SQLite committed, before a command returns.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_exit_gc() -> None:
    """At interpreter exit, freeze the heap (gc.freeze) so that finalization's collections pass over it. Call it
    from a command: it changes nothing until the process exits (an in-process caller, a test, keeps its GC), and
    by then every non-daemon thread (a request's index write) has been joined."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
