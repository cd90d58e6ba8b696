"""Copy modules between checkpoint bundles: ``python scripts/copy_module.py SRC DST policy [semantic ...]``.

Used to assemble the bundled default from stages trained into separate folders (see the model card)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vidplan_server.models.checkpoint import CheckpointError, copy_module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="bundle folder to copy from")
    p.add_argument("dst", type=Path, help="bundle folder to copy into (its other modules are kept)")
    p.add_argument("modules", nargs="+", help="module names, e.g. policy semantic")
    args = p.parse_args()
    try:
        for name in args.modules:
            print(f"{name}: {copy_module(args.src, args.dst, name)}")
    except CheckpointError as exc:
        p.exit(2, f"copy_module: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
