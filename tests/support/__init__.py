"""Helpers shared by tests: fixtures' building blocks that are not fixtures themselves."""
