"""The reference inference service: OpenAI-compatible Litestar API over CTranslate2 with dynamic batching."""

__all__: list[str] = []
