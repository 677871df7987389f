"""An async client for a vLLM OpenAI-compatible server: completions, health and load.

Completions return the generated token ids as well as text, because slice-level scheduling
continues a request from exactly the tokens generated so far. Every failure becomes one of the
exceptions in `llmfleet.engine.errors`, and every call has a timeout, so nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tokenizers import Tokenizer

from llmfleet.core.sampling import SamplingParams
from llmfleet.engine.detokenize import load_tokenizer
from llmfleet.engine.errors import (
    EngineError,
    EngineProtocolError,
    EngineRequestError,
    EngineServerError,
    EngineTimeout,
    EngineUnavailable,
)
from llmfleet.engine.metrics import EngineLoad, parse_metrics

Prompt = str | Sequence[int]


@dataclass(frozen=True)
class CompletionChunk:
    """Tokens that arrived together in a stream; `finish_reason` is set on the last one."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    prompt_token_ids: tuple[int, ...] | None = None


class EngineLike(Protocol):
    """What the data plane needs from an engine: `EngineClient` for vLLM, or a simulated engine."""

    base_url: str

    async def health(self) -> bool: ...

    async def model(self) -> str: ...

    async def max_model_len(self) -> int: ...

    async def tokenize(self, text: str) -> list[int]: ...

    async def tokenizer(self) -> Tokenizer: ...

    async def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]: ...

    async def load(self) -> EngineLoad: ...

    def stream(
        self,
        prompt: Prompt,
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        priority: int | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[CompletionChunk]: ...

    async def aclose(self) -> None: ...


class EngineClient:
    """One vLLM server at `base_url` (e.g. ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 60.0,
        probe_timeout: float = 3.0,
        connect_timeout: float = 3.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._model = model
        self._tokenizer_source = tokenizer
        # Health and load answers come fast or the engine is in trouble: a long stream timeout
        # (slices may run minutes) must not make a hung engine look merely slow to the poller.
        self.probe_timeout = probe_timeout
        self._tokenizer: Tokenizer | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- plumbing ------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise EngineTimeout(f"{method} {path} timed out", url=self.base_url) from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"{method} {path} failed: {exc!r}", url=self.base_url) from exc
        self._raise_for_status(resp)
        return resp

    def _raise_for_status(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        message = _error_message(resp)
        if resp.status_code < 500:
            raise EngineRequestError(message, status=resp.status_code, url=self.base_url)
        raise EngineServerError(message, status=resp.status_code, url=self.base_url)

    # --- API -----------------------------------------------------------------------------------
    async def health(self) -> bool:
        """True when the engine answers 200 on /health; False when it answers otherwise."""
        try:
            resp = await self._http.get("/health", timeout=self.probe_timeout)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def model(self) -> str:
        """The served model name (asked once, then cached)."""
        if self._model is None:
            data = (await self._request("GET", "/v1/models")).json()
            try:
                self._model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as exc:
                raise EngineProtocolError("/v1/models listed no model", url=self.base_url) from exc
        return self._model

    async def max_model_len(self) -> int:
        """The engine's context length, from /v1/models (0 if it does not say)."""
        data = (await self._request("GET", "/v1/models")).json()
        try:
            return int(data["data"][0].get("max_model_len") or 0)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"/v1/models is malformed: {exc!r}", url=self.base_url) from exc

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` under the served model's tokenizer (vLLM's /tokenize)."""
        body = {"model": await self.model(), "prompt": text, "add_special_tokens": True}
        data = (await self._request("POST", "/tokenize", json=body)).json()
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"/tokenize answer is malformed: {exc!r}", url=self.base_url) from exc

    async def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of (role, content) messages rendered with the model's chat template, ready
        for the assistant's answer (vLLM's /tokenize with messages)."""
        body = {"model": await self.model(), "messages": [{"role": r, "content": c} for r, c in messages],
                "add_generation_prompt": True}  # fmt: skip
        data = (await self._request("POST", "/tokenize", json=body)).json()
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"/tokenize answer is malformed: {exc!r}", url=self.base_url) from exc

    async def tokenizer(self) -> Tokenizer:
        """The served model's fast tokenizer, for text that survives slicing (`detokenize.TextStream`).

        From the `tokenizer` given at construction, else from the model vLLM loaded (`root` in
        /v1/models: a folder, or a Hugging Face id found in the local cache vLLM filled).
        """
        if self._tokenizer is None:
            source = self._tokenizer_source
            if source is None:
                data = (await self._request("GET", "/v1/models")).json()
                try:
                    entry = data["data"][0]
                    source = str(entry.get("root") or entry["id"])
                except (KeyError, IndexError, TypeError) as exc:
                    raise EngineProtocolError("/v1/models listed no model", url=self.base_url) from exc
            self._tokenizer = await asyncio.to_thread(load_tokenizer, source)
        return self._tokenizer

    async def load(self) -> EngineLoad:
        """Scrape /metrics into typed load."""
        resp = await self._request("GET", "/metrics", timeout=self.probe_timeout)
        try:
            return parse_metrics(resp.text)
        except ValueError as exc:
            raise EngineProtocolError(str(exc), url=self.base_url) from exc

    async def _body(
        self,
        prompt: Prompt,
        max_tokens: int,
        ignore_eos: bool,
        priority: int | None,
        sampling: SamplingParams | None,
        request_id: str | None,
        stream: bool,
    ) -> dict[str, Any]:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not isinstance(prompt, str):
            prompt = [int(t) for t in prompt]
            if not prompt:
                raise ValueError("a prompt of token ids must not be empty")
        body: dict[str, Any] = {
            "model": await self.model(),
            "prompt": prompt,
            "max_tokens": max_tokens,
            "ignore_eos": ignore_eos,
            "stream": stream,
            "return_token_ids": True,
        }
        body.update((sampling or SamplingParams()).to_body())
        if priority is not None:
            body["priority"] = int(priority)
        if request_id is not None:
            body["request_id"] = request_id
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(
        self,
        prompt: Prompt,
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        priority: int | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> Completion:
        """One non-streaming completion from text or token ids."""
        body = await self._body(prompt, max_tokens, ignore_eos, priority, sampling, request_id, False)
        data = (await self._request("POST", "/v1/completions", json=body)).json()
        try:
            choice = data["choices"][0]
            token_ids = tuple(int(t) for t in (choice.get("token_ids") or ()))
            usage = data.get("usage") or {}
            prompt_ids = choice.get("prompt_token_ids")
            return Completion(
                token_ids=token_ids,
                text=str(choice.get("text", "")),
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens", len(prompt_ids or ()))),
                completion_tokens=int(usage.get("completion_tokens", len(token_ids))),
                prompt_token_ids=tuple(int(t) for t in prompt_ids) if prompt_ids else None,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"malformed completion response: {exc!r}", url=self.base_url) from exc

    async def stream(
        self,
        prompt: Prompt,
        max_tokens: int,
        *,
        ignore_eos: bool = False,
        priority: int | None = None,
        sampling: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[CompletionChunk]:
        """Stream a completion. Closing the iterator early disconnects, which aborts the request in vLLM."""
        body = await self._body(prompt, max_tokens, ignore_eos, priority, sampling, request_id, True)
        try:
            async with self._http.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    self._raise_for_status(resp)
                async for line in resp.aiter_lines():
                    chunk = _parse_sse_line(line, self.base_url)
                    if chunk is not None:
                        yield chunk
        except httpx.TimeoutException as exc:
            raise EngineTimeout("completion stream timed out", url=self.base_url) from exc
        except httpx.TransportError as exc:
            raise EngineUnavailable(f"completion stream broke: {exc!r}", url=self.base_url) from exc


def _parse_sse_line(line: str, url: str) -> CompletionChunk | None:
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise EngineProtocolError(f"malformed stream event: {payload[:80]!r}", url=url) from exc
    if "error" in data and not data.get("choices"):
        err = data["error"]
        raise EngineServerError(str(err.get("message", err) if isinstance(err, dict) else err), status=500, url=url)
    choices = data.get("choices") or []
    if not choices:
        return None  # the usage-only event at the end
    choice = choices[0]
    try:
        ids = tuple(int(t) for t in (choice.get("token_ids") or ()))
    except (TypeError, ValueError) as exc:
        raise EngineProtocolError(f"malformed token ids in stream: {exc!r}", url=url) from exc
    return CompletionChunk(token_ids=ids, text=str(choice.get("text", "")), finish_reason=choice.get("finish_reason"))


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(data)[:300]


__all__ = ["Completion", "CompletionChunk", "EngineClient", "EngineError", "EngineLike"]
