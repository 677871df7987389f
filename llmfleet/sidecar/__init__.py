"""The sidecar next to each vLLM engine: runs slices with exact continuation, reports load, drains.

Start one in-process with `serve_sidecar(...)` (see `llmfleet.sidecar.app`)."""

from llmfleet.sidecar.app import SidecarHandle, serve_sidecar

__all__ = ["SidecarHandle", "serve_sidecar"]
