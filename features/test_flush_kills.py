"""Binds features/flush_kills.feature; the steps live in features/conftest.py."""

from pathlib import Path

from pytest_bdd import scenarios

# The feature next to this module, whatever bdd_features_base_dir the surrounding pytest config sets.
scenarios("flush_kills.feature", features_base_dir=str(Path(__file__).parent))
