"""Packaging facts users rely on: the license in the repo matches pyproject.toml (and ships in the wheels through
``license-files``), and the Python versions the server supports."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", [".", "client"])
def test_license_file_matches_pyproject(package):
    project = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]  # setuptools copies it into the wheel's dist-info/licenses/
    text = (ROOT / package / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_python_311_and_312_are_supported():
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(project["requires-python"])
    assert "3.11.7" in spec and "3.12.3" in spec
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"} <= set(
        project["classifiers"]
    )
