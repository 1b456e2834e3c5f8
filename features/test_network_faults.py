"""Binds features/network_faults.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("network_faults.feature")
