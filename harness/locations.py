"""Where the harness's own files are: the features and the shipped SUT profiles, in a checkout and
installed from the wheel alike.

In a checkout they are the top-level ``features/`` and ``fixtures/`` beside ``harness/``. The wheel
ships the same files inside the package, as ``harness/features`` and ``harness/fixtures``
(pyproject.toml maps the two folders there), so an installed ``crm certify`` finds them from any
directory. Only the standard library here: the pytest plugin imports this in every pytest run.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
# The SUT profiles the harness ships: a bare name (``--sut reference``) picks one of these.
SHIPPED_PROFILES = ("reference", "reference-postgres", "fragile-sync", "readonly-cache")


def _shipped_or_checkout(name: str) -> Path:
    shipped = HERE / name  # installed: harness/<name>, copied there from the top-level folder
    return shipped if shipped.is_dir() else HERE.parent / name


def features_dir() -> Path:
    """The folder of the Gherkin features, their step definitions and the modules binding them."""
    return _shipped_or_checkout("features")


def fixtures_dir() -> Path:
    """The folder ``{fixtures}`` names in a profile: sut/ (the shipped profiles), weak/ (the weak
    calibration SUTs) and postgres_pair.py."""
    return _shipped_or_checkout("fixtures")


def suite_root() -> Path:
    """Where a certification runs the suite from (its pytest rootdir and working directory): the
    folder above the package holding the features, i.e. the repository root in a checkout and
    site-packages when installed. Node ids are relative to it."""
    root = features_dir()
    while (root / "__init__.py").is_file():
        root = root.parent
    return root


def resolve_profile(sut: str | Path) -> Path:
    """The profile a ``--sut`` value names, as an absolute path: an existing file as it is, else a
    bare name of SHIPPED_PROFILES (``reference``, ``readonly-cache``...) as the shipped profile. Any
    other value comes back as given (resolved), for the profile loader to say it is missing."""
    path = Path(sut).expanduser()
    if not path.is_file() and str(sut) in SHIPPED_PROFILES:
        return fixtures_dir() / "sut" / f"{sut}.toml"
    return path.resolve()
