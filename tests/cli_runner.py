"""How the tests run the command line. By default each call is a fork of a warm server that imported the CLI once
(tests/fuzz/zygote.py, the fuzz suite's fork server, here without a memory limit): still a separate process with
its own exit code, stdout, stderr, working directory and files, but without the ~4 s torch import of a fresh
interpreter, which made up most of the command-line tests' time. With DEPLOY_NAS_EXE (another build's console
script) or DEPLOY_NAS_FRESH=1, every call is a fresh `deploy-nas` process instead. Tests that signal, time or
re-parent the process (kills, locks, umask, telemetry, torchrun) start real processes themselves.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = os.environ.get("DEPLOY_NAS_EXE") or shutil.which("deploy-nas") or str(Path(sys.executable).parent / "deploy-nas")
FRESH = bool(os.environ.get("DEPLOY_NAS_EXE") or os.environ.get("DEPLOY_NAS_FRESH"))
TIMEOUT_S = 300


class Server:
    """One warm fork server per test process (each pytest-xdist worker has its own), started on first use."""

    def __init__(self) -> None:
        self.capture = tempfile.mkdtemp(prefix="deploy-nas-tests-capture-")
        # one torch thread in the server: an OpenMP pool that exists before fork() would hang the children's first
        # parallel op; each case starts its own pool (the CLI sets the threads a command asks for)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "FUZZ_CAPTURE": self.capture, "ZYGOTE_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        ready = self.proc.stdout.readline()
        if json.loads(ready or "{}") != {"ready": True}:
            raise RuntimeError(f"the CLI fork server did not start (exit {self.proc.poll()})")
        self.lock = threading.Lock()

    def run(self, args: list[str], cwd: str, env: dict[str, str], timeout: float) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps({"args": args, "cwd": cwd, "env": env, "timeout": timeout,
                                              "memory": None}) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.capture, ignore_errors=True)


_server: Server | None = None


def _get_server() -> Server:
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = Server()
        atexit.register(_server.close)
    return _server


def run(*args, cwd=None, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """`deploy-nas ARGS...` in CWD (default: this process's) with ENV added; a CompletedProcess with text output."""
    argv = [str(a) for a in args]
    if FRESH:
        return subprocess.run([EXE, *argv], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, **(env or {})})
    reply = _get_server().run(argv, str(cwd or os.getcwd()), dict(env or {}), timeout)
    if reply["timed_out"]:
        raise subprocess.TimeoutExpired([EXE, *argv], timeout, reply["stdout"], reply["stderr"])
    return subprocess.CompletedProcess([EXE, *argv], reply["rc"], reply["stdout"], reply["stderr"])
