"""Detection over HTTP: one probe of a live (mock) server of each kind, and of servers that
lack endpoints, answer nonsense or are not there at all."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from loadgen.servers.detect import detect
from loadgen.servers.info import ServerInfo
from service.launch import free_port
from tests.support.mock_servers import KINDS, MockServer

VERSIONS = {
    "tokenbooth": "0.1.0",  # tokenbooth_build_info{version=...}
    "vllm": "0.10.1.1",  # /version
    "llamacpp": "b6100-1d72c841",  # /props build_info
    "tgi": "3.3.6",  # /info
    "sglang": "0.5.2",  # /get_server_info (after /server_info answered 404)
    "openai": "",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_is_detected_with_its_version(kind: str) -> None:
    with MockServer(kind) as server:
        info = detect(server.base_url)
    assert info.kind == kind
    assert info.version == VERSIONS[kind]
    assert info.server_view is (kind != "openai")
    assert server.errors == []
    if kind == "openai":
        assert "not recognised" in info.detected_from
    else:
        assert info.detected_from.startswith("/metrics: ")


def test_detection_is_one_look_at_metrics_models_and_a_version() -> None:
    with MockServer("sglang") as server:
        detect(server.base_url)
    assert server.paths == ["/metrics", "/v1/models", "/server_info", "/get_server_info"]


def test_a_kind_named_in_the_spec_skips_detection() -> None:
    with MockServer("vllm") as server:
        info = detect(server.base_url, kind="vllm")
    assert info == ServerInfo("vllm", "0.10.1.1", "spec", True)
    assert "/v1/models" not in server.paths


def test_a_named_kind_whose_metrics_say_nothing_has_no_server_view() -> None:
    # Told "vllm" but the server has no /metrics: the kind stands, the view is absent.
    with MockServer("openai") as server:
        info = detect(server.base_url, kind="vllm")
    assert (info.kind, info.detected_from, info.server_view) == ("vllm", "spec", False)


def test_nothing_listening_is_the_generic_kind_not_an_exception() -> None:
    info = detect(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    assert info == ServerInfo(
        "openai", "", "not recognised: no known /metrics names, owned_by or header", False
    )


class _Nonsense(http.server.BaseHTTPRequestHandler):
    """Answers 200 with text that is neither Prometheus exposition nor JSON."""

    def do_GET(self) -> None:
        body = b"{{ not metrics, not json }}\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def nonsense_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Nonsense)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_nonsense_answers_are_no_evidence(nonsense_url: str) -> None:
    info = detect(nonsense_url)
    assert (info.kind, info.version, info.server_view) == ("openai", "", False)


def test_auth_headers_go_with_every_probe() -> None:
    seen: list[str | None] = []

    class Recorder(_Nonsense):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        detect(f"http://127.0.0.1:{httpd.server_address[1]}", {"Authorization": "Bearer k"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == ["Bearer k", "Bearer k"]
