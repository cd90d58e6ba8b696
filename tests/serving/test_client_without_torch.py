"""The robot client and its test-suite work on a machine without torch (the robot's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"

# Put on PYTHONPATH as `sitecustomize`: Python runs it at start-up, before any test or client code, and from then
# on every `import torch` raises ImportError. Each attempt is logged with the files on the importing stack, so an
# optional `try: import torch` inside the client is caught too.
BLOCKER = textwrap.dedent("""
    import json, os, sys, traceback

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                stack = [f.filename for f in traceback.extract_stack()]
                with open(os.environ["NO_TORCH_LOG"], "a") as log:
                    log.write(json.dumps({"module": name, "stack": stack}) + "\\n")
                raise ImportError(f"torch is blocked on the robot ({name})")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def test_client_suite_passes_with_torch_blocked(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "torch_imports.jsonl"
    log.touch()
    env = {
        **os.environ,
        "NO_TORCH_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(CLIENT), os.environ.get("PYTHONPATH", "")]),
    }
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr, "the blocker is not active"
    log.write_text("")

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout

    check = "import sys, vidplan_client, vidplan_client.cli, vidplan_client.robot_loop; print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip() == "False", imported.stderr

    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    from_client = [a for a in attempts if any(str(CLIENT / "vidplan_client") in f for f in a["stack"])]
    assert not from_client, f"vidplan_client tried to import torch: {from_client[:1]}"
