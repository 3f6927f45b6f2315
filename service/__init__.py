"""The reference inference service.

An OpenAI-compatible Litestar API over CTranslate2 with dynamic batching and token streaming.
"""

__all__: list[str] = []
