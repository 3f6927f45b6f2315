"""Where a sweep's Locust master listens and which workers it waits for (distributed mode).

Import-light (no Locust): ``tokenbooth sweep``'s parser and the Kubernetes manifests' tests
read these defaults. :mod:`loadgen.master` runs the master with them.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from loadgen.spec import SweepSpec
from service.errors import TokenboothError

__all__ = [
    "DEFAULT_MASTER_PORT",
    "DEFAULT_WORKERS_TIMEOUT_S",
    "MasterOptions",
    "check_external_workers",
    "is_loopback",
]

logger = logging.getLogger("tokenbooth.loadgen")

DEFAULT_MASTER_PORT: Final = 5557
"""Locust's own default master port: what ``--master`` binds and workers dial unless told."""
DEFAULT_WORKERS_TIMEOUT_S: Final = 60.0
"""How long the master waits for its workers to connect before the sweep fails."""
_LOOPBACK: Final = "127.0.0.1"


@dataclass(frozen=True)
class MasterOptions:
    """How the master listens: ``bind``/``port`` (0: a free port), and who starts the workers.

    ``external``: the workers are ``tokenbooth loadgen-worker`` processes someone else starts
    (other hosts, a Kubernetes Deployment); otherwise the sweep spawns them on this host.
    """

    bind: str = _LOOPBACK
    port: int = 0
    external: bool = False
    timeout_s: float = DEFAULT_WORKERS_TIMEOUT_S

    @property
    def dial_host(self) -> str:
        """The address local workers connect to: a wildcard bind is reached on loopback."""
        return _LOOPBACK if self.bind in ("0.0.0.0", "::", "*", "") else self.bind


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) means this machine only."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_external_workers(spec: SweepSpec, options: MasterOptions, workers: int) -> None:
    """Refuse what external workers cannot run, before any replica starts.

    Local replicas listen on the master's loopback only, so workers on other hosts could not
    reach them: ``--master`` needs a remote target the workers can reach.
    """
    if not options.external:
        return
    if workers <= 0:
        raise TokenboothError("--master needs --expect-workers N (N >= 1): the workers to wait for")
    if spec.target.kind == "local":
        raise TokenboothError(
            "--master runs workers on other hosts, which cannot reach the replicas a sweep "
            'starts on 127.0.0.1: serve the model yourself and use [target] kind = "remote" '
            "with urls every worker can reach (e.g. the tokenbooth Service in the cluster)"
        )
    if not is_loopback(options.bind):
        local = [u for u in spec.target.urls if is_loopback(urlsplit(u).hostname or "")]
        if local:
            logger.warning(
                "target URL(s) %s are loopback addresses: a worker on another host sends to "
                "its own machine, not this one",
                ", ".join(local),
            )
