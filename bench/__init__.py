"""Benchmarks above the service: figures printed side by side, never timed tests.

Each benchmark starts the service as its own ``tokenbooth serve`` process (through
:mod:`service.launch`) and compares it with what it is built on. Modules:

* :mod:`bench.engine`: raw CTranslate2 ``generate_batch`` throughput and idle TTFT against the
  HTTP service at saturation (``tokenbooth bench engine``).
* :mod:`bench.client`: the benchmarks' minimal streaming HTTP client and ``/metrics`` reads.
* :mod:`bench.target`: the service under test, started the way every benchmark needs it.
* :mod:`bench.abuse`: hostile clients (slowloris, stalled readers, huge prompts, shutdown
  mid-request) against a replica, with targets (``tokenbooth bench abuse``); one module per
  scenario (``bench.abuse_*``).
* :mod:`bench.cli`: the ``bench`` subcommand, registered through an entry point.

Later: the load generator's own ceiling. ``bench``
imports ``service`` and ``telemetry``; nothing imports ``bench``.
"""

__all__: list[str] = []
