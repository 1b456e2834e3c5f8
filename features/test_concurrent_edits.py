"""Binds features/concurrent_edits.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("concurrent_edits.feature")
