"""The package's layout stays acyclic: no import cycle between its top-level parts or between its modules
(``python scripts/import_cycles.py`` prints them), and the server takes the wire contract from the client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycles():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py")], capture_output=True, text=True)
    assert "cycles between top-level parts of vidplan_server: 0" in done.stdout, done.stdout
    assert "cycles between modules: 0" in done.stdout, done.stdout
    assert done.returncode == 0


def test_the_wire_stubs_have_one_home():
    assert not list((ROOT / "vidplan_server").rglob("*_pb2*.py"))
    assert (ROOT / "client" / "vidplan_client" / "wire" / "vidplan_pb2.py").is_file()
