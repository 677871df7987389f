"""The scheduling configuration shared by the operator (which renders it into a ConfigMap),
the dispatcher (which reads it with `--config`) and the simulator.

On disk it is YAML with camelCase keys, as in the LLMFleet custom resource's `scheduling` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class LengthRange(_Camel):
    """Requests whose generated-so-far plus expected tokens fall in [minTokens, maxTokens) go to this group."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    min_tokens: int = Field(ge=0)
    max_tokens: int | None = Field(default=None, ge=1, description="exclusive upper bound; null means unbounded")

    @model_validator(mode="after")
    def _ordered(self) -> LengthRange:
        if self.max_tokens is not None and self.max_tokens <= self.min_tokens:
            raise ValueError(f"group {self.name!r}: maxTokens must be greater than minTokens")
        return self


class SchedulingConfig(_Camel):
    policy: str = Field(default="llmfleet", min_length=1)
    slice_tokens: int = Field(default=128, ge=1, le=65536)
    length_groups: list[LengthRange] | Literal["auto"] | None = None
    ranker: str | None = Field(default=None, description="path of a ranker artifact directory")
    starvation_bound_seconds: float = Field(default=30.0, gt=0)
    max_queue: int = Field(default=4096, ge=1)

    @model_validator(mode="after")
    def _groups_cover(self) -> SchedulingConfig:
        groups = self.length_groups
        if isinstance(groups, list) and groups:
            names = [g.name for g in groups]
            if len(set(names)) != len(names):
                raise ValueError("length group names must be unique")
            ordered = sorted(groups, key=lambda g: g.min_tokens)
            if ordered[0].min_tokens != 0:
                raise ValueError("the first length group must start at minTokens: 0")
            for a, b in zip(ordered, ordered[1:], strict=False):
                if a.max_tokens != b.min_tokens:
                    raise ValueError(f"length groups {a.name!r} and {b.name!r} must be contiguous")
            if ordered[-1].max_tokens is not None:
                raise ValueError("the last length group must be unbounded (no maxTokens)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(by_alias=True, exclude_none=True), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> SchedulingConfig:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("scheduling config must be a YAML mapping")
        return cls.model_validate(data)

    @classmethod
    def load(cls, path: str | Path) -> SchedulingConfig:
        return cls.from_yaml(Path(path).read_text())
