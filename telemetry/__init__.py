"""Telemetry: Prometheus metrics, OpenTelemetry traces, structured logs and GPU sampling for the service."""

__all__: list[str] = []
