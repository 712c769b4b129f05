"""Writing a result file so that nothing half-written is ever left where a reader looks."""
import os
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
