"""Artifact writing on top of deploy_nas.io: atomic, and readable like any file the user writes (umask), not the
0600/0700 modes that temporary files and directories are created with."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from deploy_nas.io import atomic_dir, atomic_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: Path, mode: int) -> None:
    path.chmod(mode & ~_umask())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary sibling, then rename it to `path`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
        _public(tmp, 0o666)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Canonical JSON (sorted keys, indent 2, trailing newline), written atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def artifact_dir(out: str | Path, force: bool = True) -> Iterator[Path]:
    """A temporary directory that replaces `out` when the block succeeds (a non-empty `out` only with `force`);
    files get normal modes."""
    with atomic_dir(out, force=force) as tmp:
        yield tmp
        for p in tmp.rglob("*"):
            _public(p, 0o777 if p.is_dir() else 0o666)
        _public(tmp, 0o777)
