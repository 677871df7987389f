"""Start the operator: build the API client, a fresh kopf registry and memo, then `kopf.run`.

Tests call `run` in a thread with `stop_flag`/`ready_flag`; `llmfleet operator run` calls it in
the main thread. Each call registers its own handlers, so restarting in one process is clean.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from llmfleet.operator.render import Defaults


@dataclass
class RunOptions:
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    liveness: str | None = None
    metrics_port: int | None = None
    defaults: Defaults = field(default_factory=Defaults)
    workers: int = 8
    resync_seconds: float = 300.0

    def check(self) -> None:
        if bool(self.namespaces) == self.all_namespaces:
            raise ValueError("choose either --namespace NS (repeatable) or --all-namespaces")


_metrics_started = threading.Lock()
_metrics_ports: set[int] = set()


def _serve_metrics(port: int) -> None:
    import prometheus_client

    with _metrics_started:
        if port not in _metrics_ports:
            prometheus_client.start_http_server(port)
            _metrics_ports.add(port)


def run(options: RunOptions, stop_flag: Any = None, ready_flag: Any = None) -> None:
    import kopf

    from llmfleet.operator import handlers
    from llmfleet.operator.kube import KubeClient, load_api_client

    options.check()
    api = load_api_client(options.kubeconfig, options.context)
    state = handlers.OperatorState(
        kube=KubeClient(api), defaults=options.defaults, workers=options.workers, clusterwide=options.all_namespaces
    )
    registry = handlers.register(kopf.OperatorRegistry(), resync_seconds=options.resync_seconds)
    if options.metrics_port:
        _serve_metrics(options.metrics_port)
    try:
        kopf.run(
            registry=registry,
            standalone=True,  # one replica (the chart's Deployment uses Recreate); no peering CRDs needed
            clusterwide=options.all_namespaces,
            namespaces=options.namespaces,
            liveness_endpoint=options.liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=kopf.Memo(state=state),
        )
    finally:
        api.close()
