"""`llmfleet dispatcher` and `llmfleet client` as processes, exactly as users and the operator run them."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from llmfleet.core.clock import wait_for_condition
from llmfleet.engine.process import free_port
from tests.dispatcher.fake_sidecar import reference
from tests.probes import serving


async def _cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_dispatcher_and_client_clis(fake_pods, tmp_path: Path):
    config = tmp_path / "scheduling.yaml"
    config.write_text("policy: fcfs-rr\nsliceTokens: 64\nmaxQueue: 100\n")
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    port = free_port()
    target = f"127.0.0.1:{port}"
    pods = ",".join(p.address for p in fake_pods)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmfleet.cli", "dispatcher", "--host", "127.0.0.1", "--port", str(port),
        "--metrics-port", "0", "--config", str(config), "--discovery", "static", "--pods", pods,
        "--policy", "scls", "--slice-tokens", "4", "--auth-token-file", str(token),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_for_condition(lambda: serving(target), 60, what="dispatcher SERVING")
        auth = ("client", "--target", target, "--token-file", str(token))
        rc, out, err = await _cli(*auth, "generate", "--token-ids", "1,2,3", "--max-tokens", "10", "--json")
        assert rc == 0, err
        result = json.loads(out)
        assert result["token_ids"] == reference([1, 2, 3], 10)
        assert result["usage"]["slices"] == 3  # --slice-tokens 4 overrides the file's 64
        rc, out, err = await _cli(*auth, "generate", "hi", "--max-tokens", "3")
        assert rc == 0 and out == "".join(f"<{t}>" for t in reference([b + 3 for b in b"hi"], 3))
        assert "3 tokens, length" in err
        rc, out, _ = await _cli(*auth, "stats")
        assert rc == 0 and "policy scls" in out and "queue 0/100" in out and fake_pods[0].address in out
        rc, out, _ = await _cli(*auth, "cancel", "nope")
        assert rc == 1 and "no such live request" in out
        rc, _, err = await _cli("client", "--target", target, "generate", "--token-ids", "1", "--max-tokens", "2")
        assert rc == 1 and "UNAUTHENTICATED" in err
        rc, _, err = await _cli(*auth, "generate", "--token-ids", "1", "--max-tokens", "0")
        assert rc == 1 and "INVALID_ARGUMENT: max_tokens must be at least 1" in err
        proc.send_signal(signal.SIGTERM)
        out_bytes, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out_bytes.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pods", "nonsense"], "is not host:port"),
        (["--pods", "a:1", "--policy", "no-such"], "unknown policy 'no-such'"),
        (["--pods", "a:1", "--slice-tokens", "0"], "bad scheduling config"),
        (["--discovery", "kubernetes"], "needs --selector"),
        (["--pods", "a:1", "--tls-cert", "x"], "--tls-cert and --tls-key go together"),
    ],
)
async def test_dispatcher_cli_rejects_bad_flags(args, message):
    rc, out, err = await _cli("dispatcher", *args)
    assert rc != 0 and message in out + err


async def test_helps_explain_themselves():
    for cmd in (["dispatcher"], ["sidecar"], ["sidecar", "drain"], ["client"], ["client", "generate"]):
        rc, out, _ = await _cli(*cmd, "--help")
        assert rc == 0 and "usage: llmfleet" in out


async def test_dispatcher_cli_reports_a_bad_ranker_artifact(tmp_path: Path):
    config = tmp_path / "scheduling.yaml"
    config.write_text(f"policy: ltr\nranker: {tmp_path / 'missing'}\n")
    rc, out, err = await _cli("dispatcher", "--port", "0", "--pods", "127.0.0.1:1", "--config", str(config))
    assert rc != 0 and "dispatcher could not start" in out + err
