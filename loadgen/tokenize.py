"""Tokens the way the server counts them: its tokenize endpoint, and each request's counts.

Synthetic prompts for a remote target are cut to ``input_tokens`` of the server's own
tokenizer through its tokenize endpoint, so a 64-token prompt is 64 tokens to the server
measured, whatever model it runs. The shapes, as each project's source defines them:

- vLLM (``vllm/entrypoints/openai/api_server.py``, ``protocol.py``): ``POST /tokenize``
  ``{"model", "prompt", "add_special_tokens"}`` -> ``{"count", "max_model_len", "tokens"}``;
  ``POST /detokenize`` ``{"model", "tokens"}`` -> ``{"prompt"}``.
- SGLang (``python/sglang/srt/entrypoints/http_server.py``, ``openai/serving_tokenize.py``):
  the same paths and request (also under ``/v1``); ``/detokenize`` answers ``{"text"}``.
- llama.cpp (``tools/server``): ``POST /tokenize`` ``{"content", "add_special",
  "with_pieces"}`` -> ``{"tokens": [{"id", "piece"}, ...]}`` (a piece that is not valid UTF-8
  comes as a list of byte values); ``POST /detokenize`` ``{"tokens"}`` -> ``{"content"}``.

TGI's ``/tokenize`` always adds the model's special tokens and tokenbooth has no such endpoint;
for those kinds the harness uses a tokenizer of its own. Special tokens are never added here:
``input_tokens`` counts the prompt text, as the built-in tokenizer does.

A prompt costs three calls (tokenize, detokenize the first ``n`` ids, count the cut) or two
with llama.cpp, whose pieces make the detokenize call unnecessary; counts are cached per text.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast

import msgspec
import requests

from loadgen.results import TokensSource
from loadgen.servers.kinds import ServerKind
from loadgen.sse import Usage
from service.errors import TokenboothError

__all__ = [
    "PROBE_TEXT",
    "RequestTokens",
    "ServerTokenizer",
    "TokenizeError",
    "probe_tokenizer",
    "request_tokens",
    "server_tokenizer",
]

logger = logging.getLogger("tokenbooth.loadgen")

_T = TypeVar("_T")

Dialect = Literal["vllm", "llamacpp"]
"""Request and response shapes: ``vllm`` (vLLM and SGLang) or ``llamacpp``."""

PROBE_TEXT: Final = "How many tokens is this?"
"""The text a probe tokenizes: any server with a tokenizer returns at least one token."""

# Which shapes to try per server kind; any other kind ("auto", "openai") tries both.
_DIALECTS: Final[dict[ServerKind, tuple[Dialect, ...]]] = {
    "vllm": ("vllm",),
    "sglang": ("vllm",),
    "llamacpp": ("llamacpp",),
}
_NO_ENDPOINT: Final[dict[ServerKind, str]] = {
    "tgi": "TGI's /tokenize always adds special tokens, so its counts are not the prompt's",
    "tokenbooth": "tokenbooth has no tokenize endpoint",
}
_BOTH: Final[tuple[Dialect, ...]] = ("vllm", "llamacpp")

# A cut re-tokenized can differ from the ids it came from (merges across the cut, a leading
# space a SentencePiece vocabulary adds); each retry moves the cut by the difference.
_MAX_CUTS: Final = 4
_CACHE_SIZE: Final = 8192
_TIMEOUT_S: Final = 10.0


class TokenizeError(TokenboothError):
    """The server's tokenize endpoint is missing, failed, or answered in a shape not known."""


class _Ids(msgspec.Struct):
    """vLLM and SGLang ``/tokenize`` answers (``count`` and ``max_model_len`` not needed)."""

    tokens: list[int]


class _Piece(msgspec.Struct):
    id: int
    piece: str | list[int]


class _Pieces(msgspec.Struct):
    """llama.cpp ``/tokenize`` answer with ``with_pieces``."""

    tokens: list[_Piece]


class _Text(msgspec.Struct):
    """A ``/detokenize`` answer: ``prompt`` (vLLM), ``text`` (SGLang) or ``content`` (llama.cpp)."""

    prompt: str | None = None
    text: str | None = None
    content: str | None = None

    def value(self) -> str | None:
        return next((v for v in (self.prompt, self.text, self.content) if v is not None), None)


_ids_decoder: Final = msgspec.json.Decoder(_Ids)
_pieces_decoder: Final = msgspec.json.Decoder(_Pieces)
_text_decoder: Final = msgspec.json.Decoder(_Text)
_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class _Encoding:
    ids: list[int]
    pieces: list[bytes] | None  # llama.cpp: each token's bytes, so a prefix needs no call


class ServerTokenizer:
    """A :class:`loadgen.workload.TokenCounter` backed by a server's tokenize endpoint.

    Args:
        url: The server's base URL (no trailing ``/``).
        dialect: The endpoint's shapes (see :data:`Dialect`).
        model: The served model's id (vLLM and SGLang take it; llama.cpp ignores it).
        headers: Sent with every call (an ``Authorization`` header, say).
        timeout_s: Per-call timeout.
    """

    def __init__(
        self,
        url: str,
        dialect: Dialect,
        *,
        model: str = "",
        headers: dict[str, str] | None = None,
        timeout_s: float = _TIMEOUT_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.dialect: Dialect = dialect
        self.model = model
        self.timeout_s = timeout_s
        self.calls = 0  # HTTP calls made: what building a workload cost
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._session = requests.Session()
        self._cache: OrderedDict[str, _Encoding] = OrderedDict()

    def describe(self) -> str:
        """Where the counts come from, for the run's environment and log."""
        return f"{self.url}/tokenize ({self.dialect} shape)"

    def close(self) -> None:
        """Release the pooled connections."""
        self._session.close()

    def check(self) -> None:
        """Tokenize :data:`PROBE_TEXT` (and in vLLM's shape detokenize a token of it) once.

        Raises:
            TokenizeError: The endpoint is missing, fails, or does not answer in this shape.
        """
        ids = self._encode(PROBE_TEXT).ids
        if not ids:
            # llama.cpp answers a body without "content" with no tokens: not its shape.
            raise TokenizeError(f"{self.url}/tokenize: no tokens for a non-empty text")
        if self.dialect == "vllm":  # llama.cpp's pieces need no /detokenize
            self._detokenize(ids[:1])

    # ------------------------------------------------------------------ TokenCounter
    def count(self, text: str) -> int:
        """Number of tokens in ``text`` by the server's count (no special tokens)."""
        return len(self._encode(text).ids) if text else 0

    def truncate(self, text: str, n: int) -> str:
        """``text`` cut to its first ``n`` tokens, checked with the server's own count.

        The cut is the decoded prefix of the server's ids; when re-tokenizing it does not give
        ``n`` (a merge across the cut), the cut moves by the difference, a few times at most.
        The closest cut found is returned either way, so a caller that needs exactness
        counts the result (a cached call).
        """
        if n <= 0:
            return ""
        enc = self._encode(text)
        if len(enc.ids) <= n:
            return text
        m = n
        best, best_gap = text, len(enc.ids) - n
        for _ in range(_MAX_CUTS):
            cut = self._prefix(text, enc, m)
            got = self.count(cut)
            if got == n:
                return cut
            if abs(got - n) < best_gap:
                best, best_gap = cut, abs(got - n)
            m += n - got
            if not 0 < m < len(enc.ids):
                break
        return best

    # ------------------------------------------------------------------ endpoint calls
    def _encode(self, text: str) -> _Encoding:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        enc = self._tokenize(text)
        self._cache[text] = enc
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return enc

    def _tokenize(self, text: str) -> _Encoding:
        if self.dialect == "llamacpp":
            raw = self._post(
                "/tokenize", {"content": text, "add_special": False, "with_pieces": True}
            )
            pieces = _decode(_pieces_decoder, raw, self.url + "/tokenize").tokens
            return _Encoding(
                ids=[p.id for p in pieces],
                pieces=[
                    p.piece.encode() if isinstance(p.piece, str) else bytes(p.piece) for p in pieces
                ],
            )
        raw = self._post(
            "/tokenize", self._with_model({"prompt": text, "add_special_tokens": False})
        )
        return _Encoding(ids=_decode(_ids_decoder, raw, self.url + "/tokenize").tokens, pieces=None)

    def _detokenize(self, ids: list[int]) -> str:
        body: dict[str, Any] = {"tokens": ids}
        raw = self._post("/detokenize", self._with_model(body) if self.dialect == "vllm" else body)
        text = _decode(_text_decoder, raw, self.url + "/detokenize")
        value = text.value()
        if value is None:
            raise TokenizeError(f"{self.url}/detokenize: no prompt, text or content in the answer")
        return value

    def _with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        # SGLang's model field is a str with a default: no model is no key, never null.
        return {"model": self.model, **body} if self.model else body

    def _prefix(self, text: str, enc: _Encoding, m: int) -> str:
        """The text of the first ``m`` ids, aligned with ``text`` where it is its prefix."""
        if enc.pieces is not None:
            # A prefix may end inside a multi-byte character: drop the partial one.
            decoded = b"".join(enc.pieces[:m]).decode("utf-8", errors="ignore")
        else:
            decoded = self._detokenize(enc.ids[:m])
        if text.startswith(decoded):
            return decoded
        # SentencePiece vocabularies decode the first word with the space they prefix to it.
        stripped = decoded.lstrip()
        return stripped if text.startswith(stripped) else decoded

    def _post(self, path: str, body: dict[str, Any]) -> bytes:
        url = self.url + path
        payload = _encoder.encode(body)
        try:
            try:
                resp = self._send(url, payload)
            except requests.ConnectionError:
                # A server may close a kept-alive connection after a response: one fresh try.
                resp = self._send(url, payload)
        except requests.RequestException as exc:
            raise TokenizeError(f"{url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise TokenizeError(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.content

    def _send(self, url: str, payload: bytes) -> requests.Response:
        self.calls += 1
        return self._session.post(url, data=payload, headers=self._headers, timeout=self.timeout_s)


def _decode(decoder: msgspec.json.Decoder[_T], raw: bytes, where: str) -> _T:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError too: a shape not known
        raise TokenizeError(f"{where}: unexpected answer: {exc}: {raw[:200]!r}") from exc


def probe_tokenizer(
    url: str,
    kind: str,
    *,
    model: str = "",
    headers: dict[str, str] | None = None,
    timeout_s: float = _TIMEOUT_S,
) -> tuple[ServerTokenizer | None, str]:
    """The server's tokenize endpoint if it has one the harness can use, probed once.

    Args:
        url: The server's base URL.
        kind: Its kind (:mod:`loadgen.servers.kinds`); ``auto``, ``openai`` or any unknown
            kind tries vLLM's shape, then llama.cpp's.
        model: The served model's id.
        headers: Sent with every call.
        timeout_s: Per-call timeout.

    Returns:
        The tokenizer, or None and why there is none.
    """
    known = cast(ServerKind, kind)  # any other string misses both tables
    if known in _NO_ENDPOINT:
        return None, _NO_ENDPOINT[known]
    tried = []
    for dialect in _DIALECTS.get(known, _BOTH):
        tok = ServerTokenizer(url, dialect, model=model, headers=headers, timeout_s=timeout_s)
        try:
            tok.check()
        except TokenizeError as exc:
            tok.close()
            tried.append(f"{dialect} shape: {exc.detail}")
            continue
        return tok, ""
    return None, "; ".join(tried)


def server_tokenizer(
    url: str,
    kind: str,
    *,
    model: str = "",
    headers: dict[str, str] | None = None,
    timeout_s: float = _TIMEOUT_S,
) -> ServerTokenizer:
    """The server's tokenize endpoint (``[workload] tokenizer = "server"``).

    Raises:
        TokenizeError: The server has no tokenize endpoint the harness can use.
    """
    tok, why = probe_tokenizer(url, kind, model=model, headers=headers, timeout_s=timeout_s)
    if tok is None:
        raise TokenizeError(
            f'[workload] tokenizer = "server": {url} (server kind {kind}) has no usable '
            f"tokenize endpoint ({why}); use a tokenizer.json path instead"
        )
    return tok


@dataclass(frozen=True)
class RequestTokens:
    """One request's token counts and where they came from (a :class:`TokensSource` value)."""

    prompt: int
    completion: int
    source: str
    mismatch: bool  # the server's usage disagrees with the streamed token chunks


def request_tokens(
    usage: Usage | None, *, chunks: int, workload_prompt: int, ok: bool
) -> RequestTokens:
    """A request's prompt and completion tokens: the server's usage, else the streamed chunks.

    Without usage, completion tokens are the token chunks streamed and prompt tokens the
    workload's own count of the prompt. A server that packs several tokens into one chunk
    shows up, when it does send usage, as a mismatch between the two.

    Args:
        usage: The stream's usage (:attr:`loadgen.sse.StreamTally.usage`), None when none came.
        chunks: Token chunks streamed (content or reasoning text).
        workload_prompt: The workload's count of the prompt (``PromptItem.input_tokens``).
        ok: Whether the request succeeded: a failed one without usage or chunks has no count.
    """
    if usage is not None:
        completion = usage.completion_tokens or 0
        return RequestTokens(
            usage.prompt_tokens or 0, completion, TokensSource.USAGE, completion != chunks
        )
    if chunks or ok:
        return RequestTokens(workload_prompt, chunks, TokensSource.CHUNKS, False)
    return RequestTokens(0, 0, TokensSource.NONE, False)
