"""A planning server for a robot-side job: ``vidplan serve`` as a subprocess here, and a checked connection to one.

:class:`LocalServer` starts ``vidplan serve`` on free localhost ports (bundled checkpoint unless ``ckpt``), waits
until its gRPC health says SERVING and stops it with SIGTERM on exit, also on errors and Ctrl-C; its log goes to
``log_path``. :func:`connect` returns a client of any server after checking its health and reading GetInfo.
Both raise :class:`LocalServerError` naming what failed. Used by ``vidplan demo`` and the closed-loop benchmark's
``--realtime`` runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class LocalServerError(Exception):
    """The server cannot be started or reached; the message names the option or the part that failed."""


SERVER_STOP_S = 60.0  # SIGTERM lets in-flight plans finish; past this the server is killed


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together while picking, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


class LocalServer:
    """``vidplan serve`` as a subprocess on free localhost ports; a context manager that always stops it."""

    def __init__(
        self,
        log_path: Path,
        ckpt: Path | None = None,
        device: str | None = None,
        token: str | None = None,
        startup_timeout_s: float = 180.0,
        dashboard_record: Path | None = None,
    ) -> None:
        self.log_path, self.ckpt, self.device, self.token = log_path, ckpt, device, token
        self.dashboard_record = dashboard_record  # plan log of the server's dashboard events (vidplan dashboard)
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.target = ""
        self.exit_code: int | None = None

    def __enter__(self) -> LocalServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        grpc_port, http_port = free_ports(2)
        cmd = [
            sys.executable,
            "-m",
            "vidplan_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--log-level",
            "info",
        ]
        if self.ckpt is not None:
            cmd += ["--ckpt", str(self.ckpt)]
        if self.device is not None:
            cmd += ["--device", self.device]
        if self.dashboard_record is not None:
            cmd += ["--dashboard-record", str(self.dashboard_record)]
        env = dict(os.environ)
        if self.token:
            env["VIDPLAN_TOKEN"] = self.token
        # Leave one core to the simulated robot, whose 15 Hz cycle must not wait for the planner's threads.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
        self.target = f"127.0.0.1:{grpc_port}"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self._wait_serving()

    def _wait_serving(self) -> None:
        import grpc
        from vidplan_client import ClientConfig, VidPlanClient

        deadline = time.monotonic() + self.startup_timeout_s
        with VidPlanClient(ClientConfig(target=self.target, token=self.token, max_attempts=1)) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise LocalServerError(
                        f"vidplan serve exited with status {code} during start-up; the end "
                        f"of {self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    if client.health(timeout_s=1.0) == "SERVING":
                        return
                except grpc.RpcError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"--startup-timeout {self.startup_timeout_s:g}: vidplan serve did not "
                        f"report SERVING in time; the end of {self.log_path}:\n"
                        f"{_tail(self.log_path)}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (graceful: in-flight plans finish), then wait; kill only if it does not stop."""
        proc = self.proc
        if proc is None or self.exit_code is not None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SERVER_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.exit_code = proc.returncode


def connect(target: str, token: str | None, started_here: bool):
    """Client of ``target`` after checking health and reading GetInfo; LocalServerError names --server otherwise."""
    import grpc
    from vidplan_client import ClientConfig, VidPlanClient

    where = "--server " + target if not started_here else "the server started here (" + target + ")"
    client = VidPlanClient(ClientConfig(target=target, token=token, info_timeout_s=5.0))
    try:
        status = client.health(timeout_s=5.0)
        if status != "SERVING":
            raise LocalServerError(f"{where}: health says {status}, not SERVING")
        info = client.info(timeout_s=10.0)
    except grpc.RpcError as exc:
        client.close()
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        raise LocalServerError(
            f"{where}: not reachable as a VidPlan gRPC server ({exc.code().name}: {details})"
        ) from None
    except BaseException:
        client.close()
        raise
    return client, info
