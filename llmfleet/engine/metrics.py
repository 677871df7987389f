"""Typed load from a vLLM server's Prometheus `/metrics` page."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# vLLM metric family name -> EngineLoad field. Counters lose their `_total` suffix in the parser.
_GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}
_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_cache_queries",
    "vllm:prefix_cache_hits": "prefix_cache_hits",
    "vllm:num_preemptions": "preemptions",
    "vllm:prompt_tokens": "prompt_tokens",
    "vllm:generation_tokens": "generation_tokens",
}


_INFO = "vllm:cache_config_info"
_WANTED = frozenset(_GAUGES) | frozenset(_COUNTERS) | {_INFO}


def _family_of(line: str) -> str:
    """The metric family a line of exposition text belongs to (samples and # HELP / # TYPE)."""
    if line.startswith("#"):
        parts = line.split(" ", 3)
        name = parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""
    else:
        name = line.split("{", 1)[0].split(" ", 1)[0]
    return name.removesuffix("_total").removesuffix("_created")


def _wanted_text(text: str) -> str:
    """Only the lines of the families read here.

    vLLM's page is mostly histogram buckets: at the demo's load the sidecar spent 13% of its
    time in the Prometheus parser, a whole page at a time on its event loop, which held back the
    tokens and slice starts it relays. The library still parses what is kept; the first sample
    line is parsed too, so a page that is not exposition text at all is still refused."""
    keep: list[str] = []
    first_sample = ""
    for line in text.splitlines():
        if not first_sample and line.strip() and not line.startswith("#"):
            first_sample = line
        if _family_of(line) in _WANTED:
            keep.append(line)
    if first_sample and first_sample not in keep:
        list(text_string_to_metric_families(first_sample + "\n"))  # raises on junk
    return "\n".join(keep) + "\n"


@dataclass(frozen=True)
class EngineLoad:
    """A snapshot of one engine's load, summed over its model labels."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction 0..1
    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    preemptions: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    # From `vllm:cache_config_info`: the KV pool's size, 0 when the engine does not say.
    kv_capacity_tokens: int = 0
    block_size: int = 0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0


def parse_metrics(text: str) -> EngineLoad:
    """Parse Prometheus exposition text from vLLM into an `EngineLoad`.

    Raises ValueError if the text is not Prometheus exposition format.
    """
    values: dict[str, float] = {}
    capacity, block = 0, 0
    try:
        families = list(text_string_to_metric_families(_wanted_text(text)))
    except Exception as exc:  # the parser raises bare ValueError/TypeError on junk
        raise ValueError(f"not Prometheus exposition text: {exc}") from exc
    for family in families:
        if family.name == _INFO and family.samples:
            capacity, block = _cache_config(family.samples[0].labels)
            continue
        field = _GAUGES.get(family.name) or _COUNTERS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            values[field] = values.get(field, 0.0) + float(sample.value)
    if "kv_cache_usage" in values:
        # Summed across model labels; a single engine serves one model, so cap at 1.
        values["kv_cache_usage"] = min(values["kv_cache_usage"], 1.0)
    return EngineLoad(
        running=int(values.get("running", 0)),
        waiting=int(values.get("waiting", 0)),
        kv_cache_usage=values.get("kv_cache_usage", 0.0),
        prefix_cache_queries=values.get("prefix_cache_queries", 0.0),
        prefix_cache_hits=values.get("prefix_cache_hits", 0.0),
        preemptions=values.get("preemptions", 0.0),
        prompt_tokens=values.get("prompt_tokens", 0.0),
        generation_tokens=values.get("generation_tokens", 0.0),
        kv_capacity_tokens=capacity,
        block_size=block,
    )


def _cache_config(labels: dict[str, str]) -> tuple[int, int]:
    """(KV capacity in tokens, block size); vLLM's info metric carries them as labels."""
    try:
        block = int(labels.get("block_size") or 0)
        size = labels.get("kv_cache_size_tokens")
        if size and size != "None":
            return int(size), block
        blocks = labels.get("num_gpu_blocks")
        if blocks and blocks != "None" and block:
            return int(blocks) * block, block
    except ValueError:
        pass
    return 0, 0
