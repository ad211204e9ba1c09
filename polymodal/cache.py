"""Where polymodal keeps derived files (e.g. class-prompt matrices): $POLYMODAL_CACHE or ~/.cache/polymodal."""

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)


_RESOLVED: dict[str, Path] = {}


def cache_dir() -> Path:
    # An empty XDG_CACHE_HOME counts as unset (XDG spec), not as "" (which would be a relative folder in the cwd).
    root = os.environ.get("POLYMODAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "polymodal"
    )
    # made absolute once, on first use: a relative POLYMODAL_CACHE=cache then stays the folder it named when the
    # process started using it (a later os.chdir, e.g. a notebook's %cd, moved it), and `polymodal info` prints
    # where it is; "~" (a quoted or env-file value the shell did not expand) is the home folder, not a folder "~"
    path = _RESOLVED.setdefault(root, Path(root).expanduser().absolute())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only HOME (containers): caches are recomputed (write_cache_bytes says so)
        log.debug("cannot create the cache folder %s: %s", path, exc)
    return path


def out_of_space(exc: BaseException) -> bool:
    """A full disk or an exhausted quota (ENOSPC, EDQUOT): the user frees space, nothing else is wrong."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def nearly_full(folder, under: int = 1 << 20) -> bool:
    """Under ``under`` bytes (1 MiB) left on the disk holding ``folder``: where a writer's own error does not say
    ENOSPC (SQLite's "disk I/O error" for a -shm it could not grow, onnx's silently truncated copy read back, numpy's
    errno-less "Not enough free space"), this is why. False when it cannot be told."""
    try:
        return shutil.disk_usage(folder).free < under
    except OSError:
        return False


_UNWRITABLE_WARNED: set[str] = set()


def write_cache_bytes(path: Path, data: bytes) -> bool:
    """atomic_write_bytes for a file that only saves time (class prompts, features): where it cannot be written (a
    read-only HOME or POLYMODAL_CACHE, a full disk) one warning naming POLYMODAL_CACHE, and False: the caller keeps
    its result in memory, so built-in models load and answer all the same."""
    return _write_cache(path, lambda: atomic_write_bytes(path, data))


def write_cache_with(path: Path, write: Callable[[BinaryIO], Any]) -> bool:
    """write_cache_bytes for content that write(file) streams in (atomic_write_with's): a feature array goes to
    the file without a copy in memory."""
    return _write_cache(path, lambda: atomic_write_with(path, write))


def _write_cache(path: Path, write: Callable[[], Any]) -> bool:
    path = Path(path)
    try:
        remove_stale_temps(path.parent)
        write()
        return True
    except OSError as exc:
        _warn_unwritable(exc)
        return False


def _warn_unwritable(exc: OSError) -> None:
    folder = str(cache_dir())
    if folder not in _UNWRITABLE_WARNED:
        _UNWRITABLE_WARNED.add(folder)
        fix = ("free some space there, or set POLYMODAL_CACHE to a folder on another disk" if out_of_space(exc)
               else "set POLYMODAL_CACHE to a writable folder")
        log.warning("cannot write the cache folder %s (%s): its files are recomputed each run; %s to keep them",
                    folder, exc.strerror or exc, fix)


STALE_TEMP_S = 3600  # a write in progress touches its file every few seconds: one untouched for an hour was killed


def remove_stale_temps(folder: Path, names=None, older_than_s: float = STALE_TEMP_S) -> list[int]:
    """Delete temporary files (temp_beside's) that a killed write left in a folder: a feature cache for 100,000
    grids is ~12 GB, and the hidden leftover stayed until the folder was deleted. ``names``: only those of these
    files (else any); ``older_than_s``: 0 where no write can be in progress (the caller holds the folder's lock).
    -> the sizes of the files deleted (`polymodal cache clear` counts them)."""
    import time

    patterns = [f".{name}.*.tmp" for name in names] if names else [".*.tmp"]
    try:
        leftovers = [tmp for pattern in patterns for tmp in Path(folder).glob(pattern)]
    except OSError:
        return []
    freed = []
    for tmp in leftovers:
        try:
            st = tmp.stat()
            if time.time() - st.st_mtime >= older_than_s:
                tmp.unlink()
                log.info("deleted %s, left by a write that did not finish", tmp)
                freed.append(st.st_size)
        except OSError:  # gone already (another process cleaned it), or not ours to delete
            pass
    return freed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new hidden temporary file in `path`'s folder, to be renamed onto `path` once complete."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file the user asked for, not a hidden temporary name they never gave
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result is an ordinary file, as open() would make it
    return fd, tmp


def is_special_file(path: Path) -> bool:
    """Whether ``path`` is a device, a pipe or a terminal (/dev/null, a shell's >(...)), or a link into /proc
    (/dev/stdout): a rename onto it would put a plain file in the device's place (as root) or fail after the work."""
    try:
        device = os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path)
        return device or os.path.islink(path) and os.readlink(path).startswith("/proc/")
    except OSError:
        return False


def refuse_special_file(path: Path) -> None:
    """is_special_file(path) refused, naming the path."""
    if is_special_file(path):
        raise PolymodalError(f"{path} is not a regular file (a device, a pipe or a process's own output); "
                             "polymodal writes files whole and renames them into place: pass a file name")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """atomic_write_bytes for content that write(file) streams in: a large file is never held whole in memory."""
    path = Path(path)
    refuse_special_file(path)
    if not path.parent.exists():  # (a file there: the OS's own "Not a directory" below, not "File exists")
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        name_the_file(exc, path)
        raise


def name_the_file(exc: BaseException, path: Path) -> None:
    """An OSError from writing a file object (a full disk's ENOSPC) carries no file name, so the CLI's one line said
    "No space left on device" without saying where: give it the file being written."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:  # (OSError("text") kept whole)
        exc.filename = str(path)


def check_creatable(folder: Path, what: str) -> None:
    """Refuse a folder that cannot be made or written (under a file, without write permission, on a read-only file
    system) before the work that fills it: found at the first write, it came after minutes of reading data (a
    training run's caching) or loading a model (an export). ``what`` names it in the message ("--out runs/x")."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PolymodalError(f"{what} cannot be made: {existing} is a file, not a folder; pass a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PolymodalError(f"{what} cannot be {'written' if existing == folder else 'made'}: no permission to "
                             f"write in {existing} (or its file system is read-only); pass a folder you can write")


_FILLING: set[Path] = set()  # the stages staged_folder calls are filling now (each a new, unique folder)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Build a folder's contents in a hidden sibling; on success it replaces `out` (an old `out` is removed only
    then), on an error it is removed. A crash or kill never leaves `out` half-written, only a hidden .partial; on
    Linux the old and new folders swap places in one step, so there is no moment without `out` either. Given a stage
    it is filling, it fills that stage: a stage in a stage would be a hidden folder no later run cleans up."""
    out = Path(out).resolve()  # `--out .` and symlinks: work on the real folder and its real parent
    if out in _FILLING:  # a stage of this process already (the CLI stages export_onnx, which stages too): fill it
        yield out
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_stages(out)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{_stage_owner()}-", suffix=".partial"))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    inside = _working_folder_is(out)  # export_onnx(model, "."): the old folder, the process's, is deleted below
    _FILLING.add(stage)
    try:
        yield stage
        if out.is_dir() and _exchange(stage, out):
            return  # the old folder is at `stage` now: removed below
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(stage, out)
        except OSError:
            if old.exists():  # put the previous folder back rather than leave none
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _FILLING.discard(stage)
        shutil.rmtree(stage, ignore_errors=True)  # the old folder after a swap; the new one after an error
        if inside:  # into the folder now at `out` (relative paths, polymodal.load("."), kept working)
            with suppress(OSError):
                os.chdir(out)


def _working_folder_is(folder: Path) -> bool:
    try:
        return Path.cwd() == folder
    except OSError:  # the working folder is deleted already
        return False


def _pid_namespace() -> str:
    """This process's PID namespace (Linux: the inode of /proc/self/ns/pid): a container with its host's hostname
    (docker --network host, a Kubernetes pod's containers) numbers its processes apart, so a PID is only asked
    about in its own namespace. "0" where there is no such file."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def _stage_owner() -> str:
    """In each stage's name: which process (host, PID namespace, PID) made it. Asked at each stage, not once at
    import: a forked child has its own PID and must not name its stage after its parent."""
    return f"{socket.gethostname()}-{_pid_namespace()}-{os.getpid()}"


def _remove_dead_stages(out: Path) -> None:
    """A process killed outright (SIGKILL, the out-of-memory killer) cannot remove its stage (an export's: 100+ MB),
    and each later kill would add one: the stages for ``out`` of this machine's processes that no longer run are
    removed as the next one starts. Another machine's (a shared file system), another PID namespace's (a container
    on this host) and older unnamed ones are left."""
    if os.name != "posix":  # os.kill(pid, 0) only asks on POSIX (on Windows it would end the process)
        return
    here = f"{socket.gethostname()}-{_pid_namespace()}"
    owned = re.compile(rf"\.{re.escape(out.name)}\.{re.escape(here)}-(\d+)-.*\.partial")
    try:
        entries = [e for e in os.scandir(out.parent) if owned.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        pid = int(owned.fullmatch(entry.name).group(1))
        if pid != os.getpid() and not _running(pid):
            shutil.rmtree(entry.path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the OS, libc or file system has no
    such call (the caller then renames twice)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc before 2.28, or a libc without it
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # not supported here: rename twice
        return False
    raise OSError(err, os.strerror(err), str(b))


def cache_key(*parts) -> str:
    """A short digest of ``parts`` (each as str) for a feature-cache file name. JSON keeps the parts apart, so texts
    holding newlines cannot make two different lists hash alike (["a\\nb", "c"] vs ["a", "b\\nc"])."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:20]


def row_key(*parts) -> bytes:
    """cache_key for one row (one photo) of an entry: 16 bytes of the digest. Rows with the same key hold the same
    features, whichever list's entry they are in."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()[:16]


def rows_file(path: Path) -> Path:
    """Beside entry KIND-<key>.npy: rowkeys-KIND-<key>.npy, the row_key of each of its rows (`cache info/clear`
    count and delete it as an entry of its own kind; a glob for KIND-*.npy does not match it)."""
    return path.with_name(f"rowkeys-{path.name}")


def store_row_keys(path: Path, keys) -> None:
    """Record the row_key of each row of the entry at ``path`` (its rows along axis 1: views x items)."""
    import numpy as np

    write_cache_with(rows_file(path), lambda f: np.save(f, np.asarray(keys, "S16")))


def rows_elsewhere(path: Path, keys) -> Iterator[tuple[Any, dict]]:
    """The rows of ``keys`` that entries of ``path``'s kind hold (another list of the same photos: another --seed's
    split, the list before a photo was dropped): (an entry, memory-mapped; {row i: its row}) per entry holding some,
    the most recently used first, which count as used. One entry at a time: each mapping holds a file descriptor,
    and a list drawn from hundreds of entries held them all (past `ulimit -n`, 256 on macOS, the cache file could
    not be made: "cannot write the cache folder"). Entries without a rows file (from before rows were keyed) offer
    none; an entry deleted meanwhile (`cache clear`) is passed over."""
    import numpy as np

    wanted: dict[bytes, list[int]] = {}
    for i, key in enumerate(np.asarray(keys, "S16").tolist()):  # as the file's read back: trailing NULs dropped
        wanted.setdefault(key, []).append(i)
    own = re.compile(rf"rowkeys-{re.escape(path.name.rsplit('-', 1)[0])}-[0-9a-f]{{16,}}\.npy")
    try:
        sides = sorted((p for p in path.parent.iterdir() if own.fullmatch(p.name)), key=_mtime, reverse=True)
    except OSError:  # no folder yet: none reused, all computed
        return
    for side in sides:
        entry = side.with_name(side.name[len("rowkeys-"):])
        try:
            held = np.load(side)
            array = np.load(entry, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            continue
        if held.ndim != 1 or array.ndim < 2 or len(held) != array.shape[1]:
            continue
        rows = {i: row for row, key in enumerate(held.tolist()) for i in wanted.pop(key, ())}
        if rows:
            mark_used(entry)
            mark_used(side)
            yield array, rows
        del array  # (closed before the next is opened)
        if not wanted:
            break


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile (`cache clear`): last, and passed over
        return 0.0


def load_cached(key: str, kind: str):
    """(path, memory-mapped array or None) of cache entry `kind`-`key` under cache_dir()/features (numpy only: the
    torch-free runtime uses it too)."""
    import numpy as np

    path = cache_dir() / "features" / f"{kind}-{key}.npy"
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:  # deleted since is_file (`polymodal cache clear` in another shell): recomputed
            return path, None
        except (OSError, ValueError, EOFError):  # EOFError: an empty file (a copy cut short, a full disk)
            log.warning("feature cache %s is unreadable; recomputing", path)
            return path, None
        mark_used(path)
        return path, array
    return path, None


def mark_used(path: Path) -> None:
    """Touch a cache file as it is served: its mtime is its last use, which `polymodal cache clear --older-than`
    goes by (atime is not kept on noatime mounts, nor updated more than daily under relatime). A read-only cache
    keeps its times."""
    with suppress(OSError):
        os.utime(path)


def store_cached(path: Path, array):
    """Write `array` to `path` atomically; -> it, memory-mapped from there (or `array` itself where the cache cannot
    be written)."""
    import numpy as np

    def save(f) -> None:
        try:
            np.save(f, array)
        except OSError as exc:  # numpy writes a real file through C: a full disk is an OSError without errno ("Not
            # enough free space to write N bytes"), which the cache's warning read as an unwritable folder
            if exc.errno is None and nearly_full(Path(path).parent, under=np.asarray(array).nbytes):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from exc
            raise

    # straight into the file: np.save into a BytesIO, then its getvalue(), held two more copies of a feature array
    # (a grid cache for 100,000 photos is ~12 GB) at once
    if not write_cache_with(path, save):
        return np.asarray(array)
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:  # deleted as soon as written (`polymodal cache clear` meanwhile): this run has it
        return np.asarray(array)


def put_rows(array, row: int, block) -> None:
    """Rows ``row, row + 1, ...`` of ``array`` (counted over its leading dimensions: views x images) are
    ``block``'s."""
    array.reshape(-1, *block.shape[1:])[row : row + len(block)] = block


class CacheFill:
    """A cache array of ``shape`` written block by block as it is computed: into a hidden temporary beside ``path``
    (temp_beside's), renamed onto ``path`` by ``finish``. store_cached needs the whole array first: a grid cache for
    VQA v2's 82,000 photos (~10 GB) was more than many machines' memory. Where the cache cannot be written (read-only,
    a full disk, at the start or midway) the array is kept in memory instead, as store_cached does; so it is with no
    ``path`` (a caller that caches nothing)."""

    def __init__(self, path: Path | None, shape: tuple, dtype) -> None:
        import numpy as np

        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.memory, self.file, self.start = None, None, None  # start: where the rows begin, once the header is in
        if path is None:
            self.memory = np.zeros(self.shape, self.dtype)
            return
        self.path = Path(path)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.path.parent)
            fd, self.tmp = temp_beside(self.path)
            # unbuffered: a full disk fails the write that hit it, never a later seek or close, whose buffered rows
            # were lost (the read-back then gave zeros, and close's error ended the run)
            self.file = os.fdopen(fd, "w+b", buffering=0)
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, header)  # (np.save's header for such a shape)
            self._write_at(0, head.getvalue())
            self.start = len(head.getvalue())
            self.file.truncate(self.start + int(np.prod(self.shape)) * self.dtype.itemsize)  # sparse: no space yet
        except OSError as exc:
            self._keep_in_memory(exc)

    def write(self, row: int, block) -> None:
        """Rows ``row, row + 1, ...`` of the array (counted over its leading dimensions) are ``block``'s."""
        if self.file is not None:
            try:
                self._write_at(self.start + row * block[0].nbytes, block.tobytes())
                return
            except OSError as exc:  # a full disk midway: the rows so far are read back
                self._keep_in_memory(exc)
        put_rows(self.memory, row, block)

    def values(self, start: int, count: int):
        """Values ``start .. start + count`` of the array, flattened (rows not written yet are zeros): what a
        torchrun sum reads a chunk at a time; ``write(start, values)`` puts them back."""
        import numpy as np

        if self.file is not None:
            data = bytearray(count * self.dtype.itemsize)
            try:
                self._read_at(self.start + start * self.dtype.itemsize, memoryview(data))
                return np.frombuffer(data, self.dtype)
            except OSError as exc:
                self._keep_in_memory(exc)
        return self.memory.reshape(-1)[start : start + count]

    def _read_at(self, offset: int, view: memoryview) -> None:
        self.file.seek(offset)
        while view:  # a raw read gives at most ~2 GB (Linux's limit for one read)
            view = view[self.file.readinto(view) or len(view) :]

    def _write_at(self, offset: int, data: bytes) -> None:
        self.file.seek(offset)
        view = memoryview(data)
        while view:  # a raw write may take part of it (the disk filled up): the rest raises the error
            view = view[self.file.write(view) :]

    def _keep_in_memory(self, exc: OSError) -> None:
        import numpy as np

        _warn_unwritable(exc)
        self.memory = np.zeros(self.shape, self.dtype)
        if self.start is not None:
            with suppress(OSError):
                self._read_at(self.start, memoryview(self.memory.reshape(-1)).cast("B"))
        self.discard()

    def discard(self) -> None:
        """Remove the temporary (an error or an interrupt while the array was computed)."""
        if self.file is not None:
            with suppress(OSError):
                self.file.close()
            self.file = None
            with suppress(OSError):
                os.unlink(self.tmp)

    def finish(self):
        """The array: memory-mapped from ``path``, or in memory where it could not be written."""
        import numpy as np

        if self.file is None:
            return self.memory
        try:
            os.fsync(self.file.fileno())
            array = np.load(self.tmp, mmap_mode="r")  # before the rename: a `cache clear` then cannot take it
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self._keep_in_memory(exc)
            return self.memory
        self.file.close()
        self.file = None
        with suppress(OSError, ValueError):  # the same file under its own name (its memmap's .filename)
            array = np.load(self.path, mmap_mode="r")
        return array
