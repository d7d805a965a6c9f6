"""Large payloads handed to a worker process as a temporary file instead of through a pipe.

Pickling a payload into a pipe copies it while holding the GIL (tens of ms for tens of MB, the
event loop paused all along); `os.write` lets go of the GIL while the kernel copies. The
reader removes nothing: the caller unlinks the file when the worker is done with it.
"""

from __future__ import annotations

import os
import tempfile


def write_temporary(data: bytes | bytearray | memoryview, prefix: str) -> str:
    """A new temporary file (in TMPDIR: a tmpfs is best) holding `data`; its path."""
    fd, path = tempfile.mkstemp(prefix=prefix)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path
