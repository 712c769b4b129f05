"""Writing a result file or folder so that nothing half-written is ever left where a reader looks."""
import os
import shutil
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def written_atomically(path: str) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; it replaces ``path`` only when the block ends without an error, so
    that a reader never sees half a file and a failed write leaves the earlier file as it was."""
    temporary = f"{path}.partial"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def torch_saved_atomically(obj, path: str) -> None:
    """``torch.save`` through ``written_atomically``: an interrupted save never leaves a truncated checkpoint."""
    import torch
    with written_atomically(path) as temporary:
        torch.save(obj, temporary)


@contextmanager
def folder_written_atomically(target: str) -> Iterator[str]:
    """The folder counterpart of ``written_atomically``: an empty folder ``<target>.partial`` (a leftover of an
    interrupted run is cleared first) to write into. When the block ends without an error it replaces ``target`` and
    whatever was there; on any error it is removed and ``target`` stays as it was."""
    partial = target.rstrip(os.sep) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(partial, target)
