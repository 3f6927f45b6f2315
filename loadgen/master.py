"""The sweep's Locust master: bind where told, spawn local workers or wait for external ones.

Importing this module imports Locust (gevent monkey-patching): only the sweep runner does.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import locust
from locust.env import Environment

from loadgen.distributed import MasterOptions
from loadgen.users import ClosedLoopUser, OpenLoopUser
from loadgen.worker import MSG_DONE, MSG_ROWS
from service.errors import TokenboothError

__all__ = ["locust_master"]

logger = logging.getLogger("tokenbooth.loadgen")

Handler = Callable[[str, dict[str, Any]], None]
"""Called with the sending worker's node id and the message's data."""


@contextmanager
def locust_master(
    options: MasterOptions,
    workers: int,
    log_path: Path,
    on_rows: Handler,
    on_done: Handler,
) -> Iterator[Any]:
    """Yield a connected master runner with ``workers`` workers; quit them all on exit.

    Raises:
        TokenboothError: fewer than ``workers`` connected within ``options.timeout_s`` (or a
            local worker exited first); the message says where they were expected.
    """
    from service.launch import die_with_parent, free_port

    env = Environment(user_classes=[ClosedLoopUser, OpenLoopUser], events=locust.events)
    port = options.port or free_port()
    master = env.create_master_runner(options.bind, port)
    master.register_message(MSG_ROWS, lambda environment, msg, **_: on_rows(msg.node_id, msg.data))
    master.register_message(MSG_DONE, lambda environment, msg, **_: on_done(msg.node_id, msg.data))
    procs: list[subprocess.Popen[bytes]] = []
    log = None
    if not options.external:
        log = log_path.open("ab")
        cmd = [sys.executable, "-m", "loadgen.worker", "--master-host", options.dial_host]
        procs = [
            subprocess.Popen(
                [*cmd, "--master-port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
            for _ in range(workers)
        ]
    else:
        logger.warning(
            "Locust master listening on %s:%d; waiting up to %g s for %d worker(s): "
            "tokenbooth loadgen-worker --master-host <this host> --master-port %d",
            options.bind,
            port,
            options.timeout_s,
            workers,
            port,
        )
    try:
        deadline = time.monotonic() + options.timeout_s
        while master.worker_count < workers:
            exited = any(p.poll() is not None for p in procs)
            if time.monotonic() > deadline or exited:
                where = (
                    f"see {log_path}"
                    if not options.external
                    else f"start them with `tokenbooth loadgen-worker --master-host <this "
                    f"host> --master-port {port}` on hosts that reach {options.bind}:{port}"
                )
                raise TokenboothError(
                    f"only {master.worker_count} of {workers} Locust workers connected to "
                    f"{options.bind}:{port} (waited up to {options.timeout_s:g} s); {where}"
                )
            gevent.sleep(0.1)
        logger.info("Locust distributed mode: %d workers connected", workers)
        yield master
    finally:
        master.quit()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if log is not None:
            log.close()
