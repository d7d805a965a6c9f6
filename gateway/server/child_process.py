"""What every helper process the gateway starts runs first: `start_child`.

The image decoders (`gateway.media.images`) and the JSON worker (`gateway.api.json_worker`) are
pools of spawned processes. Each ignores Ctrl-C, which reaches the whole process group, so
that the parent shuts its pool down in order. And each exits when its parent is gone: a
gateway killed outright (the OOM killer's SIGKILL, or a supervised worker dying) cannot close
its pools, and its helpers would otherwise wait on their queues forever, holding their memory.
A thread in the helper checks every second whether it has been handed to another parent.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_CHECK_SECONDS = 1.0


def start_child(parent: int) -> None:
    """Run first in a helper process (a pool's initializer, with ``initargs=(os.getpid(),)``
    given by the parent: a parent that died while the helper was starting is gone already)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)  # nothing of the helper's is worth finishing once nobody waits for it

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
