"""`llmfleet operator`: run the LLMFleet operator, print its CRD, or render a fleet's children offline."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="operator_command", metavar="ACTION", title="actions")

    run = sub.add_parser(
        "run",
        help="Reconcile LLMFleet resources (kopf).",
        description="Watch LLMFleet resources and keep their Deployments, Services, ConfigMap, PDB and RBAC "
        "in the state their spec asks for. Uses the in-cluster service account, else --kubeconfig.",
    )
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable); default: $WATCH_NAMESPACE, comma-separated")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (needs a ClusterRole)")
    run.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    run.add_argument("--context", default=None, help="kubeconfig context")
    run.add_argument("--liveness", default=os.environ.get("LLMFLEET_LIVENESS"),
                     help="serve kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics-port", type=int, default=int(os.environ.get("LLMFLEET_METRICS_PORT", "0")) or None,
                     help="serve Prometheus metrics on this port (/metrics)")
    run.add_argument("--dispatcher-image", default=os.environ.get("LLMFLEET_DISPATCHER_IMAGE"),
                     help="default dispatcher image for fleets that do not set one")
    run.add_argument("--sidecar-image", default=os.environ.get("LLMFLEET_SIDECAR_IMAGE"),
                     help="default sidecar image for fleets that do not set one")
    run.add_argument("--workers", type=int, default=8, help="threads for handlers (API calls block)")
    run.add_argument("--resync-seconds", type=float, default=300.0,
                     help="re-apply every fleet this often as a safety net for lost events (0: off)")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    run.set_defaults(func=_run)

    crd = sub.add_parser("crd", help="Print the LLMFleet CRD generated from the typed spec.",
                         description="Print the CustomResourceDefinition YAML; --write updates crds/ and the chart.")
    crd.add_argument("--write", action="store_true", help="write it to crds/ and charts/llmfleet/crds/")
    crd.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    crd.add_argument("--root", default=".", help="repository root for --write/--check")
    crd.set_defaults(func=_crd)

    render = sub.add_parser("render", help="Render the children of an LLMFleet manifest, offline.",
                            description="Print the objects the operator would apply for a fleet (multi-document YAML).")
    render.add_argument("file", help="LLMFleet YAML file ('-' for stdin)")
    render.add_argument("--namespace", default=None, help="override metadata.namespace")
    render.add_argument("--uid", default="00000000-0000-0000-0000-000000000000", help="owner uid to put in ownerReferences")
    render.set_defaults(func=_render)


def _run(args: argparse.Namespace) -> int:
    import logging

    from llmfleet.operator.render import Defaults
    from llmfleet.operator.runner import RunOptions, run

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespaces = args.namespace or [n for n in os.environ.get("WATCH_NAMESPACE", "").split(",") if n]
    base = Defaults()
    defaults = Defaults(dispatcher_image=args.dispatcher_image or base.dispatcher_image,
                        sidecar_image=args.sidecar_image or base.sidecar_image)
    options = RunOptions(namespaces=namespaces, all_namespaces=args.all_namespaces, kubeconfig=args.kubeconfig,
                         context=args.context, liveness=args.liveness, metrics_port=args.metrics_port,
                         defaults=defaults, workers=args.workers, resync_seconds=args.resync_seconds)
    try:
        options.check()
    except ValueError as exc:
        print(f"llmfleet operator run: {exc}", file=sys.stderr)
        return 2
    run(options)
    return 0


def _crd(args: argparse.Namespace) -> int:
    from llmfleet.operator.crd import crd_yaml, repo_crd_paths

    text = crd_yaml()
    paths = repo_crd_paths(Path(args.root))
    if args.check:
        stale = [str(p) for p in paths if not p.exists() or p.read_text() != text]
        if stale:
            print("out of date (run `llmfleet operator crd --write`): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    if args.write:
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            print(f"wrote {p}", file=sys.stderr)
        return 0
    sys.stdout.write(text)
    return 0


def _render(args: argparse.Namespace) -> int:
    import yaml

    from llmfleet.operator.handlers import parse_spec
    from llmfleet.operator.render import FleetRef, InvalidFleet, render_children

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    doc = yaml.safe_load(text)
    meta = doc.get("metadata", {})
    ref = FleetRef(meta.get("name", "fleet"), args.namespace or meta.get("namespace", "default"), args.uid)
    try:
        children = render_children(ref, parse_spec(doc.get("spec", {})))
    except InvalidFleet as exc:
        print(f"invalid fleet: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(children, sort_keys=False))
    return 0
