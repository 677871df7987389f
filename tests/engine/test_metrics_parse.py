"""The /metrics scraper turns vLLM's Prometheus text into typed load."""

import pytest

from llmfleet.engine.metrics import parse_metrics

SAMPLE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 1024.0
vllm:prefix_cache_queries_created{engine="0",model_name="tiny"} 1.7e9
# HELP vllm:prefix_cache_hits_total Prefix cache hits.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 256.0
# HELP vllm:num_preemptions_total Preemptions.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 2.0
"""


def test_parses_vllm_metrics() -> None:
    load = parse_metrics(SAMPLE)
    assert (load.running, load.waiting) == (3, 7)
    assert load.kv_cache_usage == pytest.approx(0.25)
    assert load.prefix_cache_queries == 1024 and load.prefix_cache_hits == 256
    assert load.prefix_cache_hit_rate == pytest.approx(0.25)
    assert load.preemptions == 2


def test_sums_over_engines_and_ignores_other_metrics() -> None:
    text = SAMPLE + 'vllm:num_requests_running{engine="1",model_name="tiny"} 2.0\nprocess_cpu_seconds_total 9.0\n'
    assert parse_metrics(text).running == 5


def test_missing_metrics_read_as_zero() -> None:
    load = parse_metrics("# nothing here\n")
    assert load.running == 0 and load.kv_cache_usage == 0.0


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Prometheus"):
        parse_metrics("this is { not prometheus")


def test_kv_capacity_comes_from_cache_config_info() -> None:
    info = (
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="128",num_gpu_blocks="4096",kv_cache_size_tokens="None"} 1.0\n'
    )
    load = parse_metrics(SAMPLE + info)
    assert (load.kv_capacity_tokens, load.block_size) == (4096 * 128, 128)
    assert parse_metrics(SAMPLE).kv_capacity_tokens == 0


def test_the_rest_of_a_vllm_page_is_skipped_without_changing_the_load() -> None:
    """A real page is mostly histogram buckets; only the families read are parsed, and the load
    is the same with thousands of other lines around them (including look-alike names)."""
    histogram = "".join(
        f'vllm:e2e_request_latency_seconds_bucket{{engine="0",le="{b}",model_name="tiny"}} {b * 3}\n' for b in range(2000)
    )
    look_alike = 'vllm:num_requests_running_ratio{engine="0"} 99.0\n# HELP vllm:num_requests_running_x lookalike\n'
    info = '# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{block_size="16",num_gpu_blocks="8"} 1.0\n'
    page = "# HELP vllm:e2e_request_latency_seconds e2e\n# TYPE vllm:e2e_request_latency_seconds histogram\n"
    assert parse_metrics(page + histogram + SAMPLE + look_alike + histogram + info) == parse_metrics(SAMPLE + info)
