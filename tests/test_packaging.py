"""The project installs: the wheel carries the features and the shipped SUT profiles, `crm certify`
and plain pytest find them from any folder, and the pytest plugin every pytest run loads stays light.

The slow test is the real thing: it builds the wheel, installs it into a fresh virtual environment
outside the checkout, and from a temporary folder lists the whole shipped suite, certifies the
shipped calibration SUT and the reference by name on a selection (their full certifications run
from the checkout in tests/test_calibration.py), and runs the features under plain pytest.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from setuptools import find_packages

from harness import certify, coverage, locations, pytest_plugin
from tests.support import CERTIFY_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# -- the package list and the checkout: fast ----------------------------------------------------
def test_every_package_of_crm_cli_and_harness_is_in_the_wheel():
    """pyproject lists its packages (the features and fixtures are mapped in, which `find` cannot
    do): a new subpackage must be listed too."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["crm", "crm.*", "cli", "cli.*", "harness", "harness.*"]))
    assert found <= listed, f"not in [tool.setuptools] packages: {sorted(found - listed)}"
    mapped = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapped == {"harness.features": "features", "harness.fixtures": "fixtures"}
    assert all((ROOT / folder).is_dir() for folder in mapped.values())


def test_every_file_a_shipped_profile_names_is_shipped():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert data["harness.features"] == ["*.feature"] and data["harness.fixtures.sut"] == ["*.toml"]
    shipped = {p.relative_to(ROOT / "fixtures").as_posix() for p in (ROOT / "fixtures").glob("*.py")}
    shipped |= {f"weak/{p.name}" for p in (ROOT / "fixtures" / "weak").glob("*.py")}
    for name in locations.SHIPPED_PROFILES:
        text = (ROOT / "fixtures" / "sut" / f"{name}.toml").read_text(encoding="utf-8")
        for used in {part.split('"')[0] for part in text.split("{fixtures}/")[1:]}:
            assert used in shipped, f"{name}.toml runs {{fixtures}}/{used}, which the wheel does not ship"


def test_in_a_checkout_the_harness_finds_the_top_level_folders():
    assert locations.features_dir() == ROOT / "features" == certify.FEATURES == coverage.FEATURES
    assert locations.fixtures_dir() == ROOT / "fixtures"
    assert locations.suite_root() == ROOT == certify.ROOT  # node ids stay features/test_...py::...


def test_a_bare_name_is_a_shipped_profile_and_a_file_wins(tmp_path, monkeypatch):
    for name in locations.SHIPPED_PROFILES:
        assert locations.resolve_profile(name) == ROOT / "fixtures" / "sut" / f"{name}.toml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reference").write_text("[sut]\n")  # a file of that name, in the current folder
    assert locations.resolve_profile("reference") == tmp_path / "reference"
    assert locations.resolve_profile("mine.toml") == tmp_path / "mine.toml"  # the loader says it is missing
    assert locations.resolve_profile("no-such-sut") == tmp_path / "no-such-sut"


def test_the_plugin_is_registered_and_light(request):
    """A pytest11 plugin loads in every pytest run here (this one too): it adds options and
    imports nothing beyond the standard library and harness/locations.py."""
    assert request.config.pluginmanager.get_plugin("harness.pytest_plugin") is pytest_plugin
    assert Path(request.config.getoption("crm_sut")) == ROOT / "fixtures" / "sut" / "reference.toml"
    assert request.config.getoption("crm_seed") == 1 and request.config.getoption("crm_results") is None
    for module in (pytest_plugin, locations):  # at import time (the plugin checks a profile given it lazily)
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] if node.level == 0 else f".{node.module}"
                     for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert imported <= {"__future__", "pathlib", "pytest", ".locations"}, f"{module.__name__} imports {imported}"
    assert not any(hasattr(pytest_plugin, hook) for hook in ("pytest_runtest_makereport", "pytest_collection_modifyitems"))


@pytest.mark.process
def test_plain_pytest_refuses_a_profile_it_cannot_use_before_any_scenario(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nstart = ["no-such-program-xyz"]\n')
    for sut, says in (("no-such-sut", "a bare name picks a shipped profile"), (str(bad), "server.ready")):
        done = subprocess.run([sys.executable, "-m", "pytest", "features", "-p", "no:cacheprovider", "-q",
                               "--crm-sut", sut, "-n", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 4 and "--crm-sut: " in done.stderr and says in done.stderr, done.stderr[-2000:]
        assert "INTERNALERROR" not in done.stdout + done.stderr


# -- the wheel, installed: slow -----------------------------------------------------------------
def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(argv)}  -> {done.returncode}", file=sys.stderr)
    return done


@pytest.mark.process
@pytest.mark.conformance
@pytest.mark.slow
def test_the_installed_wheel_certifies_from_any_folder(tmp_path):
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(wheels), "-q"],
                 cwd=tmp_path, env=dict(os.environ), timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("crm_offline-*.whl")

    venv = tmp_path / "venv"
    assert not venv.is_relative_to(ROOT)
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=dict(os.environ), timeout=120)
    assert made.returncode == 0, made.stderr
    python, bindir = venv / "bin" / "python", venv / "bin"
    # Dependencies from the index (or the local pip cache), as a user installs it.
    installed = _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[harness]"], cwd=tmp_path,
                     env=dict(os.environ), timeout=CERTIFY_TIMEOUT)
    assert installed.returncode == 0, installed.stderr[-3000:]

    # A clean environment: the venv's bin first, nothing of the checkout on the import path, and
    # Toxiproxy where tox built it ($CRM_TOOLS_DIR; the installed harness has no checkout to look in).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")
           and not k.startswith("PYTEST_XDIST") and k != "PYTEST_CURRENT_TEST"}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("CRM_TOOLS_DIR", str(ROOT / ".tools"))
    anywhere = tmp_path / "somewhere"
    anywhere.mkdir()

    where = _run([str(python), "-c", "import harness, cli; print(harness.__file__); print(cli.__file__)"],
                 cwd=anywhere, env=env, timeout=60)
    assert where.returncode == 0 and all(Path(line).is_relative_to(venv) for line in where.stdout.split()), where

    # Every feature shipped: --list collects the whole suite from the installed package.
    listed = _run([str(bindir / "crm"), "certify", "--sut", "readonly-cache", "--list"], cwd=anywhere, env=env,
                  timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert sum(1 for sc in coverage.scenarios() if sc.test in listed.stdout) == len(coverage.scenarios()), \
        listed.stdout[-3000:]

    # The weak calibration SUT, by its bare name, on the airplane-mode checklist's offline create
    # and force-quit (its full calibration runs from the checkout in tests/test_calibration.py).
    done = _run([str(bindir / "crm"), "certify", "--sut", "readonly-cache", "--report", "R", "-k",
                 "create_a_new_account_in_airplane_mode or forcequit_and_reopen", "--json"],
                cwd=anywhere, env=env, timeout=1200)
    cert_file = anywhere / "R" / "certificate.json"
    assert cert_file.exists(), done.stderr[-3000:]
    cert = json.loads(cert_file.read_text())
    assert cert["partial"] and cert["partial_level"] == 1, f"{cert.get('partial_reasons')}\n{done.stderr[-3000:]}"
    assert Path(cert["sut"]["profile"]).is_relative_to(venv), "the shipped profile, not the checkout's"
    junit = ET.parse(anywhere / "R" / "junit.xml").getroot().find("testsuite")
    assert int(junit.get("tests")) == 2

    # The reference, by name, one scenario: the offline create saves.
    done = _run([str(bindir / "crm"), "certify", "--sut", "reference", "-k", "create_a_new_account_in_airplane_mode",
                 "--report", "R2"], cwd=anywhere, env=env, timeout=CERTIFY_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    cert = json.loads((anywhere / "R2" / "certificate.json").read_text())
    assert cert["summary"]["scenarios"] == cert["summary"]["passed"] == 1, cert["scenarios"]

    # Plain pytest, as a QA engineer runs it: the plugin's options, their own flags.
    done = _run([str(python), "-m", "pytest", "--pyargs", "harness.features", "--crm-sut", "reference",
                 "-k", "lost_answer_reset", "-n", "2", "--junitxml=out.xml"],
                cwd=anywhere, env=env, timeout=CERTIFY_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    suite = ET.parse(anywhere / "out.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == 2 and int(suite.get("failures")) == int(suite.get("errors")) == 0
    print(f"installed-wheel test: {time.monotonic() - started:.0f} s", file=sys.stderr)


# -- installed without the harness's extra -----------------------------------------------------
@pytest.mark.parametrize("argv", [["certify", "--list"], ["certify", "check", "reference"],
                                  ["certify", "compare", "a", "b"]])
def test_certify_without_the_harness_extra_says_what_to_install(argv, monkeypatch, tmp_path):
    """`pip install crm-offline` alone gives a rep's crm; `crm certify` then names the extra to
    install, one line and its own exit code, instead of an internal error about a module."""
    import importlib.util

    from typer.testing import CliRunner

    from cli.main import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("requests", "pytest_bdd") else real(name, *a, **k))
    result = CliRunner().invoke(app, ["--home", str(tmp_path), *argv])
    assert result.exit_code == 42, (result.exit_code, result.stderr)
    assert "pip install 'crm-offline[harness]'" in result.stderr and "pytest_bdd, requests" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
