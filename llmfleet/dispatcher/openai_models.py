"""The request bodies of the OpenAI-compatible front, as pydantic models.

Unknown fields are refused (`extra="forbid"`), and each model lists the parameters it accepts
only at their "not used" value (`unsupported()`), so the front answers 400 naming them rather
than ignoring them silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Params(BaseModel):
    """What both endpoints take. Unknown fields are refused (extra="forbid"), so a typo or a
    parameter llmfleet does not know is a 400, not a silent default."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extensions that llmfleet carries end to end
    top_k: int | None = None
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    priority: int = 0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    # Accepted only at the value that means "not used": anything else is refused by name.
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def unsupported(self) -> list[str]:
        out = []
        if self.n not in (None, 1):
            out.append("n > 1")
        if self.presence_penalty not in (None, 0.0) or self.frequency_penalty not in (None, 0.0):
            out.append("presence_penalty / frequency_penalty")
        return out


class CompletionRequest(Params):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def unsupported(self) -> list[str]:
        out = super().unsupported()
        out += ["echo"] * self.echo + ["suffix"] * (self.suffix is not None) + ["logprobs"] * (self.logprobs is not None)
        return out + ["best_of > 1"] * (self.best_of not in (None, 1))


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Params):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def unsupported(self) -> list[str]:
        out = super().unsupported()
        out += ["logprobs"] * bool(self.logprobs or self.top_logprobs)
        out += ["tools"] * bool(self.tools or self.functions or self.tool_choice not in (None, "none"))
        out += ["function_call"] * (self.function_call not in (None, "none"))
        return out + ["response_format"] * bool(self.response_format and self.response_format.get("type") != "text")
