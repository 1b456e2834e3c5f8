"""Binds features/life_events.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("life_events.feature")
