"""Atomic writes and checked loads: a crash mid-write never replaces a good file with a broken one."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

WEIGHT_FILE_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt")  # a path with one of these names a file, not a folder


def umask() -> int:
    """The process's umask (read by setting it and putting it back): what a file or folder it creates is masked by."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_to_destroy(target: str | Path, sources, what: str, source: str, fix: str) -> None:
    """A ValueError when writing `target` (replacing it whole, as an export or a report does) would delete one of
    `sources` (paths; None skipped): `target` is that source or a folder above it. `what` names the target, `source`
    what the sources are, `fix` what to do instead."""
    where = Path(os.path.abspath(target))
    for src in sources:
        if src is None:
            continue
        src = Path(os.path.abspath(src))
        if where == src or where in src.parents:
            raise ValueError(f"{what} {str(target)!r} is or holds {source} ({src}); writing there would delete it: "
                             f"{fix}")


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp (and safetensors) make it 0600: readable as any other file one writes
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_folder(folder: str | Path, write) -> Path:
    """Call `write(tmp_folder)` on a temp folder beside `folder`, then swap it in whole (an old `folder` is moved
    aside first and deleted after): a crash leaves the old folder, or none, never a half-written one."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it 0700: the folder a user gets is readable as any other
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        # rename(2) replaces only an empty folder: move the old one aside, swap the new one in, delete the old one
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
    return folder


def atomic_save(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | Path, expect: str | None = None) -> dict:
    """torch.load a checkpoint written by `atomic_save`; a ValueError names a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; check the path or start a new run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({type(e).__name__}: {e}); "
                         "delete it to start over") from e
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} was not written by unlearnkit; delete it or pass another path")
    if expect is not None and ckpt["kind"] != expect:
        raise ValueError(f"checkpoint {str(path)!r} is a {ckpt['kind']!r} checkpoint, not {expect!r}; "
                         "pass the matching checkpoint or a new output folder")
    return ckpt


def cache_key(obj) -> str:
    """A short stable key for a JSON-able `obj` (its sha1, 20 hex digits): the name of a cache entry."""
    return hashlib.sha1(json.dumps(obj, default=str).encode()).hexdigest()[:20]
