"""Generate the Python code of the wire contract (``proto/vidplan/v1/vidplan.proto``).

    python scripts/gen_proto.py            # rewrite the committed copy
    python scripts/gen_proto.py --check    # exit 1 when the committed copy is out of date
    python scripts/gen_proto.py --out DIR  # write one copy into DIR instead (tests use this)

One protoc run (grpcio-tools, pinned in the ``[dev]`` extra) makes ``vidplan_pb2.py``, ``vidplan_pb2.pyi``
and ``vidplan_pb2_grpc.py`` into the client package (``client/vidplan_client/wire``), their one home: the
server depends on the client and imports them from there. protoc writes ``from vidplan.v1 import vidplan_pb2``
into the gRPC module; that one line is rewritten to a relative import so the module works from inside the
package, and the ``.pyi`` stub gets a ``# ruff: noqa`` first line (generated code is not linted).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO = Path("vidplan/v1/vidplan.proto")  # relative to PROTO_ROOT; also the descriptor's file name
TARGETS = (ROOT / "client" / "vidplan_client" / "wire",)
INIT = '"""Generated from proto/vidplan/v1/vidplan.proto by scripts/gen_proto.py; do not edit."""\n'
_ABSOLUTE_IMPORT = re.compile(r"^from vidplan\.v1 import vidplan_pb2 as ", re.MULTILINE)


def render() -> dict[str, str]:
    """Run protoc once and return ``{file name: text}`` of everything a target folder holds."""
    from grpc_tools import protoc  # dev-only dependency; imported here so `--help` works without it

    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO}")
        out = Path(tmp) / PROTO.parent
        files = {p.name: p.read_text() for p in sorted(out.glob("vidplan_pb2*"))}
    grpc_module = files["vidplan_pb2_grpc.py"]
    if not _ABSOLUTE_IMPORT.search(grpc_module):
        raise SystemExit("protoc's import line in vidplan_pb2_grpc.py changed; update gen_proto.py")
    files["vidplan_pb2_grpc.py"] = _ABSOLUTE_IMPORT.sub("from . import vidplan_pb2 as ", grpc_module)
    # The repo's ruff config excludes *_pb2.py and *_pb2_grpc.py; the stub file says so itself.
    files["vidplan_pb2.pyi"] = "# ruff: noqa\n" + files["vidplan_pb2.pyi"]
    files["__init__.py"] = INIT
    return files


def write(files: dict[str, str], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text)


def stale(files: dict[str, str], target: Path) -> list[str]:
    """Files of ``target`` that are missing or differ from ``files``."""
    return [
        str(target / name)
        for name, text in files.items()
        if not (target / name).is_file() or (target / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed copy is stale")
    parser.add_argument("--out", type=Path, help="write one copy into this folder instead of the client package")
    args = parser.parse_args(argv)

    files = render()
    targets = [args.out] if args.out else list(TARGETS)
    if args.check:
        bad = [path for target in targets for path in stale(files, target)]
        if bad:
            print("out of date (run `python scripts/gen_proto.py`):\n  " + "\n  ".join(bad), file=sys.stderr)
            return 1
        return 0
    for target in targets:
        write(files, target)
        print(f"wrote {', '.join(sorted(files))} to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
