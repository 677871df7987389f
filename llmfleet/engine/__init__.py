"""The engine layer: the real vLLM server, the tiny model it serves here, and a client for its API."""

from llmfleet.engine.errors import (
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineServerError,
    EngineTimeout,
    EngineUnavailable,
)

__all__ = [
    "EngineError",
    "EngineProtocolError",
    "EngineRequestError",
    "EngineServerError",
    "EngineTimeout",
    "EngineUnavailable",
]
