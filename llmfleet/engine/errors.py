"""Clear exceptions for everything that can go wrong when talking to a vLLM engine."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: the engine at `url` could not do what was asked."""

    retryable = False

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(f"{message} (engine {url})" if url else message)
        self.url = url


class EngineUnavailable(EngineError):
    """Nothing answered: connection refused, reset or DNS failure. Safe to retry elsewhere."""

    retryable = True


class EngineTimeout(EngineError):
    """The engine accepted the connection but did not answer in time. Safe to retry elsewhere."""

    retryable = True


class EngineRequestError(EngineError):
    """The engine rejected the request itself (HTTP 4xx), e.g. a prompt longer than the context."""

    def __init__(self, message: str, *, status: int, url: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}", url=url)
        self.status = status


class EngineServerError(EngineError):
    """The engine failed while serving (HTTP 5xx). Safe to retry elsewhere."""

    retryable = True

    def __init__(self, message: str, *, status: int, url: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}", url=url)
        self.status = status


class EngineProtocolError(EngineError):
    """The engine answered with something that is not a valid response. Safe to retry elsewhere."""

    retryable = True
