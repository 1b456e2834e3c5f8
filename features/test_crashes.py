"""Binds features/crashes.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("crashes.feature")
