"""The one registry of scheduling policies: name -> factory, one-line description, and what it
needs.

`llmfleet sim policies` prints this table. The simulator and the dispatcher both build policies
with `make_policy(config)` from the one `SchedulingConfig`, so every setting reaches the policy
unchanged. Routing-only baselines (fcfs-rr, least-load, llm-d, dynamo) take none of the settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llmfleet.core.scheduling import Policy

if TYPE_CHECKING:
    from llmfleet.core.config import SchedulingFields


@dataclass(frozen=True)
class PolicySpec:
    name: str
    description: str
    factory: Callable[..., Policy]
    uses_predictions: bool = False
    needs_true_lengths: bool = False
    slices: Literal["never", "optional", "always"] = "never"
    kind: Literal["product", "peer", "research", "bound"] = "research"


def _lazy(module: str, cls: str) -> Callable[..., Policy]:
    """A factory that imports the policy's module only when the policy is built (fast CLI start)."""

    def factory(config: SchedulingFields, **kw: Any) -> Policy:
        policy: Policy = getattr(importlib.import_module(f"llmfleet.policies.{module}"), cls)(config, **kw)
        return policy

    return factory


_fcfs_rr = _lazy("fcfs_rr", "FcfsRoundRobin")
_least_load = _lazy("least_load", "LeastLoad")
_llm_d = _lazy("llm_d", "LlmD")
_dynamo = _lazy("dynamo", "DynamoKvRouter")
_sls = _lazy("sls", "SequenceLevelStatic")
_scls = _lazy("scls", "SliceLevel")
_ltr = _lazy("ltr", "LearningToRank")
_alise = _lazy("alise", "Alise")
_l4 = _lazy("l4", "LengthGroups")
_oracle = _lazy("oracle_srpt", "OracleSrpt")
_llmfleet = _lazy("llmfleet_default", "LLMFleetDefault")


POLICIES: dict[str, PolicySpec] = {
    s.name: s
    for s in (
        PolicySpec(
            "fcfs-rr",
            "vanilla vLLM: FCFS continuous batching, requests spread round-robin (production-stack's default)",
            _fcfs_rr,
            kind="peer",
        ),
        PolicySpec(
            "least-load",
            "load-aware routing on queue depth + KV utilisation, FCFS in each engine",
            _least_load,
            kind="peer",
        ),
        PolicySpec(
            "llm-d",
            "llm-d's default endpoint picker: prefix-cache (3) + queue (2) + KV-utilisation (2) scorers, FCFS",
            _llm_d,
            kind="peer",
        ),
        PolicySpec(
            "dynamo",
            "NVIDIA Dynamo's KV router: least (uncached prefill blocks + active decode blocks), FCFS",
            _dynamo,
            kind="peer",
        ),
        PolicySpec("sls", "sequence-level static batching, FCFS (SCLS's baseline)", _sls),
        PolicySpec(
            "scls",
            "slice-level batching: S-token slices, memory-bound batch size, max-min offload",
            _scls,
            slices="always",
        ),
        PolicySpec(
            "ltr",
            "predicted-rank shortest-job-first with an absolute starvation guard",
            _ltr,
            uses_predictions=True,
            slices="optional",
        ),
        PolicySpec(
            "alise",
            "priority by estimated remaining time with aging; memory-aware preemption",
            _alise,
            uses_predictions=True,
        ),
        PolicySpec(
            "l4",
            "length-specialised pod groups (lengthGroups, or a DP partition); requests migrate as they grow",
            _l4,
        ),
        PolicySpec(
            "oracle-srpt",
            "shortest-remaining-first on TRUE lengths, per slice (a bound, not a product policy)",
            _oracle,
            needs_true_lengths=True,
            slices="always",
            kind="bound",
        ),
        PolicySpec(
            "llmfleet",
            "default: learned-rank SRPT, time and overtake starvation guards, held queue, prefix/load routing",
            _llmfleet,
            uses_predictions=True,
            slices="optional",
            kind="product",
        ),
    )
}


def policy_names() -> list[str]:
    return list(POLICIES)


def policy_spec(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


def make_policy(config: SchedulingFields | str = "llmfleet", **settings: Any) -> Policy:
    """Build the policy a scheduling config names, with that config's settings.

    `config` is a `SchedulingConfig` (or the CRD's scheduling block), or just a policy name;
    keyword `settings` replace config fields (snake_case, e.g. `slice_tokens=64`).
    """
    from llmfleet.core.config import SchedulingConfig

    if isinstance(config, str):
        config = SchedulingConfig(policy=config, **settings)
    elif settings:
        config = SchedulingConfig.model_validate({**config.model_dump(exclude={"ranker"}), **settings})
    return policy_spec(config.policy).factory(config)
