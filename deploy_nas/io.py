"""Writing artifacts without ever losing a user's files.

* Everything is built under a temporary name beside its final place and renamed into place when complete. An
  existing output is swapped with the new one in one step (`renameat2(RENAME_EXCHANGE)` on Linux) and only then
  deleted, so a kill at any moment leaves either the old or the new output under the final name.
* Every temporary carries `deploy-nas-<host>-<pid>-` in its name; a later run into the same parent (and every CLI
  start, for the system temp directory) sweeps those of dead processes of this host, and says what it swept.
* Every directory deploy-nas creates holds a marker (`.deploy-nas`) listing the files it wrote. `--force` replaces
  only such a directory (or an empty one), and only if it holds nothing else: it never deletes a file it did not
  write, and it refuses `.`, `/`, `$HOME`, the current directory or its ancestors, and any input or its ancestors.
* An output is locked (an advisory lock file beside it) while a process writes it: a second writer fails at once.
* Files and directories get the modes a user's umask gives anything they create (not the 0600/0700 of temporaries).
* A failing write (read-only file system, a full disk, a path under /proc) is an OutputPathError (exit 2).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from deploy_nas.errors import OutputPathError, brief

MARKER = ".deploy-nas"
TAG = "deploy-nas"
LOCK_SUFFIX = f".{TAG}-lock"  # an output's lock file, beside it: `.<name>.deploy-nas-lock`


def _pid_space() -> str:
    """Who may judge from a pid whether a temporary's maker is alive: this host name, this boot of the machine and
    this pid namespace (two containers with one host name, two machines with one name on a shared file system,
    each see pids the other cannot)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "\0".join(parts)


_HOST = hashlib.sha256(_pid_space().encode()).hexdigest()[:6]
_HELD: set[str] = set()  # outputs this process holds the lock of (the CLI locks early, atomic_dir again)


def load_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file. The library takes only UTF-8 paths; one that is not (a name in another
    encoding) is read as bytes instead, so its tensors load like any other file's."""
    from safetensors.torch import load, load_file

    path = str(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        with open(path, "rb") as f:
            return load(f.read())
    return load_file(path)


# The sha256 of each file one command has hashed, keyed by the file's identity and stat (a file replaced or written
# since is hashed again): the dense files are checked by several steps of a command (the graph's record, the
# engine's, the rows' records, the manifest), and hashing a large model's weights once is enough. None outside one.
_DIGESTS: ContextVar[dict[tuple, str] | None] = ContextVar("deploy_nas_digests", default=None)


@contextlib.contextmanager
def one_command() -> Iterator[None]:
    """Within it (a command: export, build, parity, bench, run; nested ones share it) each file is hashed once."""
    if _DIGESTS.get() is not None:
        yield
        return
    token = _DIGESTS.set({})
    try:
        yield
    finally:
        _DIGESTS.reset(token)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 (inside `one_command`, once per file and stat)."""
    cache = _DIGESTS.get()
    key = None
    if cache is not None:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in cache:
            return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    if cache is not None:
        cache[key] = h.hexdigest()
    return h.hexdigest()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path: Path) -> None:
    """Give `path` (and, for a directory, everything under it) the modes of a normally created file or directory."""
    mask = umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


# ----------------------------------------------------------------------------------------------- temporaries


def temp_name(name: str, suffix: str = "tmp") -> str:
    """A hidden sibling name for `name` that says who made it; always <= 255 bytes, whatever `name` is."""
    stem = name.encode()[:80].decode(errors="ignore")
    return f".{stem}.{TAG}-{_HOST}-{os.getpid()}-{os.urandom(4).hex()}.{suffix}"


def temp_dir(purpose: str) -> tempfile.TemporaryDirectory:
    """A directory in the system temp dir named for its owner (swept after a kill -9 like every temporary)."""
    sweep(Path(tempfile.gettempdir()))
    return tempfile.TemporaryDirectory(prefix=f"{TAG}-{_HOST}-{os.getpid()}-{purpose}-")


def _owner(name: str) -> int | None:
    """The pid in a temporary's name if a process of this host, boot and pid namespace made it, else None."""
    _, found, rest = name.partition(f"{TAG}-{_HOST}-")
    pid = rest.split("-", 1)[0]
    return int(pid) if found and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(parent: Path, log: Any = None) -> list[Path]:
    """Remove the temporaries (and lock files) that dead deploy-nas processes of this host left in `parent`;
    return them. Old outputs set aside during a replace are kept (and reported): they may be all a user has."""
    swept = []
    try:
        entries = list(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return swept
    for p in entries:
        if p.name.endswith(LOCK_SUFFIX) and _stale_lock(p):
            swept.append(p)
            continue
        pid = _owner(p.name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if p.name.endswith(".old"):
            print(f"note: {p} holds an output set aside by a killed deploy-nas run (pid {pid}); rename it back or "
                  "remove it", file=sys.stderr)
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            swept.append(p)
    if swept:
        (log or (lambda m: print(m, file=sys.stderr)))(
            f"note: removed {len(swept)} temporary file(s) left by killed deploy-nas runs: "
            + ", ".join(str(p) for p in swept[:5]) + (" ..." if len(swept) > 5 else ""))
    return swept


def _stale_lock(lock: Path) -> bool:
    """Remove a lock file nobody holds (its holder was killed); True if removed."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        lock.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------- ownership


def _read_marker(d: Path) -> set[str] | None:
    try:
        return set(json.loads((d / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_marker(d: Path, files: set[str]) -> None:
    (d / MARKER).write_text(json.dumps({"written_by": TAG, "files": sorted(files)}, indent=1) + "\n")


def _mark_tree(root: Path) -> None:
    """A marker in every directory under `root` (and `root`) listing the files in it: all of it is ours."""
    for d in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        files = {p.name for p in d.iterdir() if p.is_file() and p.name != MARKER}
        _write_marker(d, files | (_read_marker(d) or set()))


def record_written(path: Path, create: bool = False) -> None:
    """Add a file written into a deploy-nas directory to that directory's marker (so --force may replace it);
    `create`: start a marker in a directory that has none (it then owns that file alone)."""
    files = _read_marker(path.parent)
    if files is None and create:
        files = set()
    if files is not None and path.name not in files:
        with contextlib.suppress(OSError):
            _write_marker(path.parent, files | {path.name})


def written_here(path: Path) -> bool:
    """Whether deploy-nas wrote `path` (its directory's marker lists it)."""
    return path.name in (_read_marker(path.parent) or set())


def check_replaceable(path: Path, command: str) -> None:
    """Refuse before any work when `command` would replace `path` and deploy-nas did not write it (its
    directory's marker does not list it): a user's file of the same name is never overwritten."""
    if (path.exists() or path.is_symlink()) and not written_here(path):
        raise OutputPathError(f"{command} would replace {path}, which deploy-nas did not write; move it away or "
                              "use another directory")


def foreign_entries(d: Path, limit: int = 5) -> list[str]:
    """What in directory `d` deploy-nas did not write (empty: `d` may be replaced). A directory is ours when its
    marker lists the files in it and each sub-directory is ours; an empty directory owns nothing to lose. A lock
    file (a killed deploy-nas left it beside an output inside `d`) is deploy-nas's by its name."""
    written = _read_marker(d)
    foreign = []
    for p in sorted(d.iterdir()):
        if p.name == MARKER or p.name.endswith(LOCK_SUFFIX):
            continue
        if p.is_dir() and not p.is_symlink():
            if written is not None:
                foreign += [f"{p.name}/{f}" for f in foreign_entries(p, limit)]
            else:
                foreign.append(p.name + "/")
        elif written is None or p.name not in written:
            foreign.append(p.name)
        if len(foreign) >= limit:
            break
    return foreign[:limit]


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p, each directory created here getting a marker (so the files written into it can be recorded);
    returns the directories created, outermost first."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _write_marker(d, set())
        created.append(d)
    return created


def remove_if_unused(dirs: list[Path]) -> None:
    """Remove directories `make_dirs` created that ended up holding nothing but their marker (innermost first)."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            if {p.name for p in d.iterdir()} <= {MARKER}:
                shutil.rmtree(d)


# --------------------------------------------------------------------------------------------- output checks


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before Python 3.13), a name too long
        raise OutputPathError(f"cannot resolve the path {brief(str(path), 80)}: {getattr(err, 'strerror', None) or err}"
                              ) from None


def _is_ancestor_or_same(a: Path, b: Path) -> bool:
    return a == b or a in b.parents


def check_output_dir(out: str | Path, force: bool = False, inputs: Sequence[str | Path | None] = (),
                     flag: str = "--force", resumes: Sequence[str] = (),
                     replaced_whole: Sequence[str | Path | None] = (), resumed_whole: Sequence[str] = (),
                     read_whole: Sequence[str | Path | None] = (), swapped: bool = True) -> Path:
    """`out` if it can be written: not a file, not a place --force must never replace, empty or (with `force`) a
    directory that only holds what deploy-nas wrote. Fails before any slow work starts. `resumes`: `force` is a
    resume flag, and a non-empty `out` must hold one of these files: a resume is no --force for a directory with
    nothing to resume (an empty or absent one starts from the beginning), nor, where `swapped`, for one holding a
    sub-directory (a resumed directory is then replaced whole, and none writes one: it is another command's
    output). `replaced_whole`: input directories that other commands replace as a whole (a supernet directory, a
    dense model); `out` may not lie inside one. `resumed_whole`: the state files (written by deploy-nas) of a
    directory a `--resume` replaces whole without --force; `out` may not lie inside a directory holding one, input
    of this command or not.
    `read_whole`: input directories read whole (image folders: an output inside would become part of the data).
    `swapped`: the output is built beside `out` and swapped in (all but the search, which writes in place), which
    a mount point cannot take. With `force`, temporaries and locks that killed deploy-nas runs left in `out` are
    swept first (they are no user's files)."""
    out = Path(out)
    resolved = _resolve(out)
    protected = [(Path.cwd().resolve(), "the current directory or one of its parents"),
                 (Path.home().resolve(), "your home directory or one of its parents")]
    for place, what in protected:
        if _is_ancestor_or_same(resolved, place):
            raise OutputPathError(f"refusing to write output {out}: it is {what}; choose a new sub-directory")
    for given in inputs:
        if given is None:
            continue
        source = _resolve(Path(given))
        if _is_ancestor_or_same(resolved, source):
            raise OutputPathError(f"refusing to write output {out}: it holds the input {given}; choose another path")
    for given in replaced_whole:  # e.g. a supernet directory: `train --resume` replaces it whole, with what is inside
        if given is not None and Path(given).is_dir() and _is_ancestor_or_same(_resolve(Path(given)), resolved):
            raise OutputPathError(f"refusing to write output {out} inside the input directory {given} (a command "
                                  "that rewrites that directory would take the output with it); choose a path "
                                  "outside it")
    for given in read_whole:
        if given is not None and Path(given).is_dir() and _is_ancestor_or_same(_resolve(Path(given)), resolved):
            raise OutputPathError(f"refusing to write output {out} inside the input directory {given}: its files "
                                  "are read as data, and the output's would join them; choose a path outside it")
    for parent in resolved.parents:
        held = [name for name in resumed_whole if (parent / name).is_file() and written_here(parent / name)]
        if held:
            raise OutputPathError(f"refusing to write output {out} inside {parent}, a directory that `--resume` "
                                  f"replaces whole ({held[0]} is its training state): the output would go with it; "
                                  "choose a path outside it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputPathError(f"output {out} is a file or a link; choose a directory path")
    if swapped and out.is_dir() and os.path.ismount(out):
        raise OutputPathError(f"output {out} is a mount point: deploy-nas builds an output beside its place and "
                              "swaps it in, which a mount point cannot take; write into a new sub-directory of it")
    if out.exists() and _nonempty(out):
        if not force:
            raise OutputPathError(f"output directory {out} is not empty; choose another path or pass {flag}")
        if resumes and not any((out / name).is_file() for name in resumes):
            raise OutputPathError(f"{flag}: {out} holds nothing to resume (no {' or '.join(resumes)}); pass the "
                                  "directory of the interrupted run, or choose a new path")
        # a directory resumed by replacing it whole (training) would take a sub-directory with it; one resumed in
        # place (a search) leaves it be
        nested = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.is_symlink()) \
            if resumes and swapped else []
        if nested:
            raise OutputPathError(f"{flag} replaces {out} whole, and it holds {nested[0]}/, which no training run "
                                  f"writes (another command's output?); move it out of {out}, then resume")
        sweep(out)  # a killed run's temporaries in it are deploy-nas's, not the user's
        foreign = foreign_entries(out)
        if foreign:
            raise OutputPathError(f"refusing to replace {out}: it holds files deploy-nas did not write "
                                  f"({', '.join(brief(f, 40) for f in foreign)}); move them or choose another path")
    return out


def _nonempty(d: Path) -> bool:
    try:
        return any(d.iterdir())
    except OSError as err:
        raise OutputPathError(f"cannot read output directory {d}: {err.strerror}") from None


# ---------------------------------------------------------------------------------------------------- locking


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold the advisory lock of output `out` (re-entrant in one process); another holder fails at once. The lock
    is keyed on the resolved path and lies beside it, never inside: `.`, `sub/..` and a symlink to a directory name
    the one lock of the directory they reach."""
    out = Path(out)
    key = str(out.resolve())
    if key in _HELD:
        yield
        return
    real = Path(key)
    parent = real.parent
    with _as_output_error(out):
        created = make_dirs(parent)
    lock = parent / f".{_lock_stem(real.name)}{LOCK_SUFFIX}"
    fd = _acquire(lock, out)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        remove_if_unused(created)  # a failed write leaves no empty parents behind


def _lock_stem(name: str) -> str:
    """The output's name in its lock's name: whole when short, else its first 60 bytes and a digest of all of it (a
    file name has at most 255 bytes; two long names with one prefix must not share a lock)."""
    raw = name.encode(errors="surrogateescape")
    if len(raw) <= 80:
        return name
    return f"{raw[:60].decode(errors='ignore')}-{hashlib.sha256(raw).hexdigest()[:16]}"


def _acquire(lock: Path, out: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
        except OSError as err:
            raise OutputPathError(f"cannot write beside {out}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputPathError(f"output {out} is being written by another deploy-nas process (pid {holder}); "
                                  "wait for it or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not unlinked by a releasing holder meanwhile
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


# -------------------------------------------------------------------------------------------- atomic writing


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _replace_dir(new: Path, out: Path) -> None:
    """Put `new` at `out`; an existing `out` is set aside first and deleted only once `new` is in place."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # `new` now holds the old output
        return
    old = out.parent / temp_name(out.name, "old")
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old)


@contextlib.contextmanager
def _as_output_error(target: Path) -> Iterator[None]:
    try:
        yield
    except OutputPathError:
        raise
    except OSError as err:
        where = err.filename or target
        raise OutputPathError(f"cannot write {target}: {err.strerror or err} ({brief(str(where), 120)}); "
                              "choose a writable location with free space") from None


@contextlib.contextmanager
def library_write(path: str | Path) -> Iterator[None]:
    """Around a file written by a library (safetensors, torch.save, OpenVINO's save_model): a failure to write (a
    full disk, a quota) comes out of them as their own types (SafetensorError, torch's and OpenVINO's RuntimeError)
    and is an OutputPathError naming the file, like any failed write of ours. Wrap the write call alone. What does
    not look like a failure to write (no OSError, no word of one, free space left) goes on as it was raised."""
    from deploy_nas.errors import DeployNASError, reason

    path = Path(path)
    try:
        yield
    except DeployNASError:
        raise
    except Exception as err:  # noqa: BLE001 (each library raises its own type for the same failure)
        why = err.strerror if isinstance(err, OSError) and err.strerror else reason(err, 100)
        try:
            free_bytes: int | None = shutil.disk_usage(path.parent).free
        except OSError:
            free_bytes = None
        said = any(word in str(err) for word in _WRITE_FAILURES)
        if not (isinstance(err, OSError) or said or (free_bytes is not None and free_bytes < 64 << 20)):
            raise
        free = "" if free_bytes is None else f"; {free_bytes / 2**20:.1f} MiB free there"
        raise OutputPathError(f"cannot write {path}: {why}{free}; choose a writable location with free space") \
            from None


# How safetensors, torch.save (its zip writer: "unexpected pos" after a short write) and OpenVINO ("iostream error")
# word a failed write.
_WRITE_FAILURES = ("No space", "I/O error", "iostream", "unexpected pos", "quota", "os error", "Errno")


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `out`; on success it replaces `out` (see the module doc), on any error
    it is removed. `force`: replace a non-empty `out` that holds only what deploy-nas wrote."""
    out = check_output_dir(out, force)
    with output_lock(out), _as_output_error(out):
        sweep(out.parent)
        tmp = out.parent / temp_name(out.name)
        tmp.mkdir()
        try:
            yield tmp
            _mark_tree(tmp)
            make_public(tmp)
            if out.exists():
                check_output_dir(out, force)  # still replaceable now that the work is done
                with contextlib.suppress(OSError):
                    tmp.chmod(out.stat().st_mode & 0o7777)  # an existing directory keeps its mode
            _replace_dir(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; it is renamed to `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; expected a file path")
    with _as_output_error(path):
        created = make_dirs(path.parent)
        tmp = path.parent / temp_name(path.name)
        try:
            tmp.touch()
            yield tmp
            make_public(tmp)
            os.replace(tmp, path)
            record_written(path)
        finally:
            tmp.unlink(missing_ok=True)
            remove_if_unused(created)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Canonical JSON (sorted keys, indent 2, trailing newline), written atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
