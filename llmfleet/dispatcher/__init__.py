"""The gRPC dispatcher: runs the scheduling policies live, in slices, over sidecars and vLLM.

Start one in-process with `serve_dispatcher(...)` (see `llmfleet.dispatcher.service`)."""

from llmfleet.dispatcher.core import Dispatcher, DispatcherSettings
from llmfleet.dispatcher.service import DispatcherHandle, serve_dispatcher

__all__ = ["Dispatcher", "DispatcherHandle", "DispatcherSettings", "serve_dispatcher"]
