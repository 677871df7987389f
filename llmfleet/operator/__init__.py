"""The LLMFleet Kubernetes operator: typed spec and generated CRD, pure rendering, kopf handlers."""
