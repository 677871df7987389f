"""A local fleet on this machine: engines (real vLLM or simulated), a sidecar each, a dispatcher."""
