"""The one registry of scheduling policies: name -> factory and one-line description.

`llmfleet sim policies` prints this table; the simulator and the dispatcher both build
policies with `make_policy(name, **options)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmfleet.core.scheduling import Policy


@dataclass(frozen=True)
class PolicySpec:
    name: str
    description: str
    factory: Callable[..., Policy]
    uses_predictions: bool = False
    needs_true_lengths: bool = False


def _fcfs_rr(**kw: Any) -> Policy:
    from llmfleet.policies.fcfs_rr import FcfsRoundRobin

    return FcfsRoundRobin(**kw)


def _least_load(**kw: Any) -> Policy:
    from llmfleet.policies.least_load import LeastLoad

    return LeastLoad(**kw)


def _sls(**kw: Any) -> Policy:
    from llmfleet.policies.sls import SequenceLevelStatic

    return SequenceLevelStatic(**kw)


def _scls(**kw: Any) -> Policy:
    from llmfleet.policies.scls import SliceLevel

    return SliceLevel(**kw)


def _ltr(**kw: Any) -> Policy:
    from llmfleet.policies.ltr import LearningToRank

    return LearningToRank(**kw)


def _alise(**kw: Any) -> Policy:
    from llmfleet.policies.alise import Alise

    return Alise(**kw)


def _l4(**kw: Any) -> Policy:
    from llmfleet.policies.l4 import LengthGroups

    return LengthGroups(**kw)


def _prefix(**kw: Any) -> Policy:
    from llmfleet.policies.prefix import PrefixAware

    return PrefixAware(**kw)


def _oracle(**kw: Any) -> Policy:
    from llmfleet.policies.oracle_srpt import OracleSrpt

    return OracleSrpt(**kw)


def _llmfleet(**kw: Any) -> Policy:
    from llmfleet.policies.llmfleet_default import LLMFleetDefault

    return LLMFleetDefault(**kw)


POLICIES: dict[str, PolicySpec] = {
    s.name: s
    for s in (
        PolicySpec(
            "fcfs-rr", "vanilla vLLM: FCFS continuous batching, requests spread round-robin", _fcfs_rr
        ),
        PolicySpec(
            "least-load",
            "llm-d-style routing on queue depth + KV utilisation, FCFS in each engine",
            _least_load,
        ),
        PolicySpec("sls", "sequence-level static batching, FCFS (SCLS's baseline)", _sls),
        PolicySpec(
            "scls", "slice-level batching: S-token slices, memory-bound batch size, max-min offload", _scls
        ),
        PolicySpec(
            "ltr", "predicted-rank shortest-job-first with a starvation guard", _ltr, uses_predictions=True
        ),
        PolicySpec(
            "alise",
            "priority by estimated remaining time with aging; swap/recompute preemption",
            _alise,
            uses_predictions=True,
        ),
        PolicySpec("l4", "length-specialised pod groups (DP partition); requests migrate as they grow", _l4),
        PolicySpec("prefix", "prefix-cache-aware routing from hash_ids, combined with load", _prefix),
        PolicySpec(
            "oracle-srpt",
            "shortest-remaining-first on TRUE lengths, per slice (a bound)",
            _oracle,
            needs_true_lengths=True,
        ),
        PolicySpec(
            "llmfleet",
            "default: learned-rank SJF + starvation guard, held queue, prefix/load routing",
            _llmfleet,
            uses_predictions=True,
        ),
    )
}


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, **options: Any) -> Policy:
    try:
        spec = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return spec.factory(**options)
