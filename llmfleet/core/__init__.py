"""Mechanism-free building blocks shared by the simulator, the dispatcher and the policies."""
