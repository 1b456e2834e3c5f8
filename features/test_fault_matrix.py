"""Binds features/fault_matrix.feature; the steps live in features/conftest.py."""

from pytest_bdd import scenarios

scenarios("fault_matrix.feature")
