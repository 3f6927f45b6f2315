"""Fixtures shared by the deploy tests: the ``kubectl`` and ``promtool`` binaries."""

from tests.unit.deploy.test_deploy import kubectl, promtool

__all__ = ["kubectl", "promtool"]
