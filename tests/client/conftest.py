"""Fixtures for the CLI client tests: fake pods from the dispatcher tests."""

from tests.dispatcher.conftest import fake_pods

__all__ = ["fake_pods"]
