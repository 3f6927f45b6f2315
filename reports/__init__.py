"""Capacity reports built from loadgen run directories."""

__all__: list[str] = []
