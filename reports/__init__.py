"""Capacity reports built from loadgen run directories.

``tokenbooth report RUN_DIR [RUN_DIR_B]`` turns a sweep into the document a capacity review
needs. The pipeline, one module per stage:

* :mod:`reports.load`: read a run directory (through :mod:`loadgen.results`) and its spec.
* :mod:`reports.analysis`: exact percentiles with bootstrap CIs, validity, knees, SLO capacity.
* :mod:`reports.capacity`: a batch-service queue fitted from the server's batch metrics,
  simulated to predict replica counts and rates that were not measured, with its hold-out error.
* :mod:`reports.recommend`: configuration and replica count for a target load.
* :mod:`reports.compare`: two runs side by side, regressions beyond noise.
* :mod:`reports.plots`: one pure function per figure.
* :mod:`reports.sections`: what the report says, one function per section
  (:mod:`reports.document` holds the sections, tables and figures).
* :mod:`reports.render`: the sections as self-contained HTML or as Markdown.
* :mod:`reports.pipeline`: :func:`~reports.pipeline.build_report`, every stage in order, and the
  files it writes (HTML, Markdown, PNG, summary CSV).
* :mod:`reports.cli`: the ``report`` subcommand, registered through an entry point.

Nothing here talks to a live service.
"""

__all__: list[str] = []
