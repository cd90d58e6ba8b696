"""Regenerate the golden regression artifacts (tests/artifacts/golden/*.safetensors) on purpose.

    python scripts/make_golden.py            # every case
    python scripts/make_golden.py plan edm   # some cases

Run it only when a change is meant to move the numbers (a new bundled checkpoint, a deliberate change of a
sampler or of the planner), then commit the files. CPU, one thread, so the numbers do not depend on the machine's
thread count. The cases are defined in tests/golden_cases.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from tests import golden_cases as golden

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "cases", nargs="*", metavar="CASE", help=f"cases to regenerate: {', '.join(golden.CASES)} (default all)"
    )
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in golden.CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(golden.CASES)}")

    import torch

    torch.set_num_threads(1)
    for case in args.cases or golden.CASES:
        inputs = golden.make_inputs(case)
        outputs = golden.compute(case, inputs, golden.load_models(case))
        file = golden.save(case, inputs, outputs)
        print(f"wrote {file.relative_to(ROOT)} ({file.stat().st_size / 1e3:.0f} kB): {', '.join(outputs)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
