"""The conformance features: Gherkin files, the modules binding them (test_*.py) and their step
definitions (conftest.py). A package so the wheel can ship it as ``harness.features``:
``pytest --pyargs harness.features --crm-sut PROFILE`` runs it from any folder."""
