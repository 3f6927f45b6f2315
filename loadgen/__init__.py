"""Load harness: Locust-driven sweeps over replicas, batch settings and load levels."""

__all__: list[str] = []
