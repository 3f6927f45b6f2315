"""Fixtures of the integration tests: real third-party servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from service.launch import free_port
from service.models.paths import default_gguf_path
from tests.conftest import missing_tool
from tests.support.llama_server import (
    LLAMA_SERVER_ENV,
    llama_server_binary,
    running_llama_server,
)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of llama.cpp's llama-server serving the default GGUF, for the whole session.

    Skipped on a developer's machine, failed in CI, when ``TOKENBOOTH_LLAMA_SERVER`` does not
    name a runnable binary (``scripts/test.sh`` builds one and sets it).
    """
    binary = llama_server_binary()
    if binary is None:
        missing_tool(f"{LLAMA_SERVER_ENV} is not set: bash scripts/build_llama_server.sh builds it")
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        missing_tool(f"{LLAMA_SERVER_ENV}={binary} is not an executable file")
    log_path = tmp_path_factory.mktemp("llama-server") / "llama-server.log"
    with running_llama_server(
        binary=binary, gguf=default_gguf_path(), port=free_port(), log_path=log_path
    ) as server:
        yield server.url
