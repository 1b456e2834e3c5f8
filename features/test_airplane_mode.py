"""Binds features/airplane_mode.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("airplane_mode.feature")
