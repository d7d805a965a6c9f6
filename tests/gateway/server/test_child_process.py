"""`start_child`: a helper process goes when the gateway that started it is gone.

Before it, a gateway worker killed outright left its image decoders running for good (three
processes a run of tests/gateway/server/test_workers.py, seen as orphans after the suite).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import eventually

ROOT = Path(__file__).resolve().parents[3]

PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from gateway.server.child_process import start_child

    if __name__ == "__main__":
        pool = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=start_child, initargs=(os.getpid(),),
        )
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(60)
    """
)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_helper_exits_when_its_parent_is_killed() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        helper = int(parent.stdout.readline())
        assert not _gone(helper)
        time.sleep(0.3)
        assert not _gone(helper)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
    assert eventually(lambda: _gone(helper), timeout=5)


def test_a_helper_whose_parent_died_while_it_started_exits_at_once() -> None:
    code = "from gateway.server.child_process import start_child; start_child(1); "
    code += "import time; time.sleep(60)"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30, check=False)
    assert done.returncode == 0
    assert time.monotonic() - started < 10  # not the 60 s it sleeps
