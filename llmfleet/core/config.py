"""The scheduling configuration: the one owner of every scheduling setting and its default.

It flows unchanged from the LLMFleet custom resource's `scheduling` block (the CRD's
`SchedulingSpec` is `SchedulingFields` plus a ranker reference; the operator renders a
`SchedulingConfig` into a ConfigMap) to the dispatcher (`--config`) and the simulator (`--config`
and flags), and from there to the policy: `llmfleet.policies.registry.make_policy(config)` builds
every policy from it, so a field set in the CRD is the value the policy acts on.

On disk it is YAML with camelCase keys, as in the custom resource.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from llmfleet.core.scheduling import FALLBACK_SLICE_TOKENS


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


class AutoGroups(_Camel):
    groups: int = Field(default=2, ge=1, le=16, description="How many length groups the DP partition forms.")


class LengthGroups(_Camel):
    """Length-specialised pod groups (l4): explicit token ranges, or `auto` for the DP partition."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.ranges) != has(self.auto)", "message": "set exactly one of ranges or auto"}
            ]
        }
    )

    ranges: list[LengthRange] | None = Field(default=None, min_length=1, max_length=16)
    auto: AutoGroups | None = None

    @model_validator(mode="after")
    def _valid(self) -> LengthGroups:
        if (self.ranges is None) == (self.auto is None):
            raise ValueError("lengthGroups: set exactly one of ranges or auto")
        if self.ranges:
            names = [g.name for g in self.ranges]
            if len(set(names)) != len(names):
                raise ValueError("length group names must be unique")
            ordered = self.ordered()
            if ordered[0].min_tokens != 0:
                raise ValueError("the first length group must start at minTokens: 0")
            for a, b in zip(ordered, ordered[1:], strict=False):
                if a.max_tokens != b.min_tokens:
                    raise ValueError(f"length groups {a.name!r} and {b.name!r} must be contiguous")
            if ordered[-1].max_tokens is not None:
                raise ValueError("the last length group must be unbounded (no maxTokens)")
        return self

    def ordered(self) -> list[LengthRange]:
        """Explicit ranges from the shortest up (an empty list in auto mode)."""
        return sorted(self.ranges or [], key=lambda r: r.min_tokens)

    def names(self) -> list[str]:
        if self.ranges is not None:
            return [r.name for r in self.ordered()]
        assert self.auto is not None
        return [f"g{i}" for i in range(self.auto.groups)]


class SchedulingFields(_Camel):
    """Every scheduling setting with its one default (the CRD and the config file share these)."""

    policy: str = Field(
        default="llmfleet",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][-a-z0-9_]*$",
        description="Scheduling policy (`llmfleet sim policies` lists them).",
    )
    slice_tokens: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Slice length S: a request runs at most S tokens, then is re-ranked and may move. Unset runs "
        f"requests to completion (scls and oracle-srpt, which only work in slices, then use {FALLBACK_SLICE_TOKENS}).",
    )
    length_groups: LengthGroups | None = Field(default=None, description="l4's length-specialised pod groups.")
    starvation_bound_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="Starvation guard: a request that has waited this long after arrival goes ahead of every "
        "shorter one (oldest first).",
    )
    starvation_overtake_turns: float | None = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Starvation guard relative to load: a request goes ahead of every shorter one (oldest first) once "
        "later arrivals have started before it this many times as often as the fleet has requests running (1: one "
        "more turn of every busy slot). It bounds the tail where the queue builds for less time than "
        "`starvationBoundSeconds`. null turns it off (left out, it is 1). Used by llmfleet.",
    )
    starvation_overtake_queue_fraction: float | None = Field(
        default=0.5,
        ge=0,
        le=1000,
        description="How the overtake guard widens with the queue: a request goes ahead once overtaken by the larger "
        "of `starvationOvertakeTurns` turns and this fraction of the requests then waiting. In a queue deeper than "
        "the running batch, one turn would send nearly every waiter ahead in arrival order (FCFS); half the queue "
        "keeps the ranking and still bounds the tail. null or 0: turns alone. Used by llmfleet.",
    )
    prefill_pace_tokens: int | None = Field(
        default=2048,
        ge=1,
        le=1048576,
        description="llmfleet's prefill pacing: a pod gets a new request only once the prompt tokens it is still "
        "prefilling, plus the new request's uncached ones, fit this budget (or it is prefilling nothing), so "
        "decode batches see one prefill at a time. null turns pacing off.",
    )
    engine_lookahead: int = Field(
        default=0,
        ge=0,
        le=256,
        description="llmfleet's admission lookahead: how many requests beyond its free slots each engine may hold "
        "waiting, so that a finished request's slot is refilled at the engine's next step instead of after a round "
        "trip to the dispatcher. They wait in the policy's rank order (engines run vLLM's priority scheduling). "
        "0 (the default, measured best on the CPU fleet: bench/DATAPLANE.md) releases a request only when a "
        "slot is free.",
    )
    max_queue: int = Field(default=4096, ge=1, le=1000000, description="Bound of the dispatcher queue.")

    @model_validator(mode="after")
    def _known_policy(self) -> SchedulingFields:
        # Imported here: the registry imports the scheduling types, which must not import it back.
        from llmfleet.policies.registry import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(POLICIES)}")
        return self

    @property
    def slice_or_fallback(self) -> int:
        """S for policies that only work in slices."""
        return self.slice_tokens or FALLBACK_SLICE_TOKENS


class SchedulingConfig(SchedulingFields):
    ranker: str | None = Field(default=None, description="path of a ranker artifact directory")

    def with_changes(self, **changes: object) -> SchedulingConfig:
        """A validated copy with some fields replaced (snake_case names); None values are ignored."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return SchedulingConfig.model_validate(data)

    def to_yaml(self) -> str:
        # A None that is not the field's default means "off" (a guard, pacing) and must survive
        # the trip to the dispatcher; dropped, it would load back as the default.
        defaults = type(self)().model_dump(by_alias=True)
        data = {k: v for k, v in self.model_dump(by_alias=True).items() if v is not None or defaults.get(k) is not None}
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> SchedulingConfig:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("scheduling config must be a YAML mapping")
        return cls.model_validate(data)

    @classmethod
    def load(cls, path: str | Path) -> SchedulingConfig:
        return cls.from_yaml(Path(path).read_text())
