"""Prove the image's install steps without a container engine: run them in a clean virtualenv, then run the server
the way the image does and check it with the image's own HEALTHCHECK and STOPSIGNAL.

    python scripts/check_image_install.py [--variant cpu] [--workdir /tmp/vidplan-image] [--out result.json]

Steps, each read from the ``Dockerfile`` (so the check follows it when it changes):

1. the build context: the files ``.dockerignore`` lets through, copied to ``WORKDIR/context``;
2. the builder stage's ``RUN sh deploy/docker/install.sh`` with the build arguments as variables, in a fresh
   virtualenv (``TORCH_INDEX_URL`` empty: pip's configured index, as this machine reaches no other);
3. the runtime stage's ``ENV`` and ``ENTRYPOINT`` (``vidplan serve``) from that virtualenv, on free ports, from
   an empty working folder (not the source tree, so the installed package and its bundled checkpoint are used);
4. the ``HEALTHCHECK`` command until it exits 0 (within the start period), then the ``STOPSIGNAL``: the server must
   exit 0 within the drain (``VIDPLAN_SHUTDOWN_GRACE``).

Takes minutes (the install); not part of the tests. ``tests/test_deploy.py`` checks the Dockerfile's structure.
Prints and writes a JSON summary (times, the virtualenv's size).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ Dockerfile reading
def parse_dockerfile(text: str) -> list[dict]:
    """The stages of a Dockerfile: ``[{"name", "from", "instructions": [(KEYWORD, arguments)]}]``; the global
    ``ARG`` lines before the first ``FROM`` form a stage named ``""``. Continuation lines are joined; comments and
    blank lines dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append((current + line).strip())
        current = ""
    stages = [{"name": "", "from": None, "instructions": []}]
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append({"name": name, "from": words[0], "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def stage(stages: list[dict], name: str) -> dict:
    return next(s for s in stages if s["name"] == name)


def instructions(stage_: dict, keyword: str) -> list[str]:
    return [args for kw, args in stage_["instructions"] if kw == keyword]


def exec_form(args: str) -> list[str]:
    """``CMD ["a", "b"]`` / ``ENTRYPOINT [...]`` arguments as a list (the JSON exec form)."""
    return json.loads(args)


def env_of(stage_: dict) -> dict[str, str]:
    """The ``ENV KEY=VALUE ...`` settings of a stage."""
    out = {}
    for args in instructions(stage_, "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def healthcheck(stage_: dict) -> tuple[dict[str, str], list[str]]:
    """(options, command) of a stage's ``HEALTHCHECK ... CMD [...]``."""
    (args,) = instructions(stage_, "HEALTHCHECK")
    options_text, _, command = args.partition("CMD ")
    options = dict(word[2:].split("=", 1) for word in options_text.split())
    return options, exec_form(command)


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def context_files(root: Path) -> list[Path]:
    """The files of the build context: ``.dockerignore`` applied (``**`` then ``!`` exceptions, then excludes),
    over the files git tracks."""
    patterns = [
        p.strip()
        for p in (root / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kept = []
    for rel in tracked:
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            hit = (
                pat == "**"
                or fnmatch.fnmatch(rel, pat)
                or rel.startswith(pat + "/")
                or fnmatch.fnmatch(rel, pat.replace("**/", "*/"))
                or fnmatch.fnmatch(rel, pat + "/*")
            )
            if hit:
                included = negate
        if included and (root / rel).is_file():
            kept.append(Path(rel))
    return kept


# ------------------------------------------------------------------------------------------ the check
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variant",
        choices=("cpu", "gpu"),
        default="cpu",
        help="the VARIANT build argument (default cpu: this machine has no GPU)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vidplan-image-check"))
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here (JSON)")
    args = parser.parse_args(argv)

    stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    builder, runtime = stage(stages, "builder"), stage(stages, "runtime")
    runs = instructions(builder, "RUN")
    assert any(r.strip() == "sh deploy/docker/install.sh" for r in runs), "the builder no longer runs install.sh"
    build_args = {}
    for arg in instructions(builder, "ARG"):
        key, _, value = arg.partition("=")
        build_args[key] = value
    build_args.update(VARIANT=args.variant, TORCH_INDEX_URL="")  # pip's configured index: the only one reachable

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    context, env_dir, home = args.workdir / "context", args.workdir / "venv", args.workdir / "home"
    files = context_files(ROOT)
    for rel in files:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    home.mkdir(parents=True)
    summary: dict = {
        "variant": args.variant,
        "context_files": len(files),
        "context_bytes": sum((context / f).stat().st_size for f in files),
    }

    t = time.monotonic()
    venv.create(env_dir, with_pip=True, clear=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDPLAN_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env = {
        **base_env,
        "VIRTUAL_ENV": str(env_dir),
        "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}",
        **{k: v for k, v in build_args.items() if v is not None},
    }
    install = subprocess.run(["sh", "deploy/docker/install.sh"], cwd=context, env=env, capture_output=True, text=True)
    summary["install_s"] = round(time.monotonic() - t, 1)
    print(install.stdout[-3000:], install.stderr[-3000:], sep="\n")
    if install.returncode:
        print(f"install.sh failed ({install.returncode})", file=sys.stderr)
        return 1
    summary["venv_mb"] = round(_du(env_dir) / 2**20, 1)
    summary["install_smoke"] = install.stdout.strip().splitlines()[-1]

    # Run as the image does: its ENV, its entry point, from an empty folder, on free ports.
    grpc_port, http_port = _free_port(), _free_port()
    run_env = {
        **env,
        **env_of(stage(stages, f"base-{args.variant}")),
        **env_of(stage(stages, "base")),
        **env_of(runtime),
        "HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "VIDPLAN_HOST": "127.0.0.1",
        "VIDPLAN_GRPC_PORT": str(grpc_port),
        "VIDPLAN_HTTP_PORT": str(http_port),
    }
    run_env["PATH"] = f"{env_dir / 'bin'}:{os.environ['PATH']}"
    run_env.pop("VIRTUAL_ENV", None)
    entrypoint = exec_form(instructions(runtime, "ENTRYPOINT")[0])
    options, check = healthcheck(runtime)
    check = [w.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}") for w in check]
    (stop_signal,) = instructions(runtime, "STOPSIGNAL")
    log = (args.workdir / "server.log").open("w")
    t = time.monotonic()
    server = subprocess.Popen(entrypoint, cwd=home, env=run_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        start_period = seconds(options["start-period"])
        healthy = False
        while time.monotonic() - t < start_period + 60:
            probe = subprocess.run(
                check, cwd=home, env=run_env, capture_output=True, text=True, timeout=seconds(options["timeout"]) + 10
            )
            if probe.returncode == 0:
                healthy = True
                break
            if server.poll() is not None:
                break
            time.sleep(1.0)
        summary["healthy"] = healthy
        summary["healthy_after_s"] = round(time.monotonic() - t, 1)
        if not healthy:
            print((args.workdir / "server.log").read_text()[-3000:], file=sys.stderr)
            return 1
        t = time.monotonic()
        server.send_signal(getattr(signal, stop_signal))
        grace = float(run_env.get("VIDPLAN_SHUTDOWN_GRACE", "30"))
        code = server.wait(grace + 15)
        summary["stop_exit_code"] = code
        summary["stop_s"] = round(time.monotonic() - t, 1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    lines = (args.workdir / "server.log").read_text().splitlines()
    json_lines = sum(1 for line in lines if line.startswith("{"))
    summary["json_log_lines"] = f"{json_lines}/{len(lines)}"
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))
    return 0 if summary.get("stop_exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
