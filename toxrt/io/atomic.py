"""Files replaced atomically: written under a temporary name beside the target, then renamed.

``os.replace`` is atomic on POSIX filesystems: a reader (or a run killed halfway) sees the old
file or the new one, never half of one. What a kill leaves is a ``<name>.tmp`` file, which the
session loader ignores and ``toxrt finish`` removes (``finish.remove_temporary_files``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

TMP_SUFFIX = ".tmp"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``<name>.tmp`` beside it."""
    return path.with_name(path.name + TMP_SUFFIX)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; once the block ends without an error it replaces ``path``.

    For writers that want a file name (``np.savetxt``, ``h5py.File``, ``torch.save``). After an
    error the temporary file is left as it is (the next ``toxrt finish`` removes it).
    """
    path = Path(path)
    tmp = temporary_path(path)
    yield tmp
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """``open`` the temporary file (``mode`` "wb" or "w", ``kwargs`` as for ``open``); once the block
    ends without an error the file is closed and replaces ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)
