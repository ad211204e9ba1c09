"""One exception type for every user mistake; the CLI prints its message as one line."""


class PolymodalError(Exception):
    """A problem the user can fix: the message names what is wrong and what to do."""


def out_of_memory(exc: BaseException) -> str | None:
    """How an allocation failed, when ``exc`` says one did (else None): Python's and numpy's MemoryError, PyTorch's
    CPU allocator (a RuntimeError), onnxruntime's (its own exception class), a C++ std::bad_alloc (FAISS), a fork
    refused (ENOMEM). Each reads differently; a small machine's user gets one line instead of any of them."""
    import errno
    import re

    text = str(exc)
    if isinstance(exc, PolymodalError):  # already the user's line, which may quote a path ("photos/bad_alloc")
        return None
    if isinstance(exc, OSError):  # by its errno alone: its text names a file ("No such file: 'x/bad_alloc.npy'")
        if exc.errno != errno.ENOMEM:
            return None
    elif not (isinstance(exc, MemoryError) or any(s in text for s in ("allocate memory", "bad_alloc"))):
        return None
    size = re.search(r"(?:allocate|mmap) (\d+) bytes|buffer of size (\d+)", text)  # PyTorch's, onnxruntime's
    if size:
        return f"an allocation of {int(size.group(1) or size.group(2)) / 2**20:,.1f} MB failed"
    return text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__  # numpy's names its size
