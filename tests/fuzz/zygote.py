"""A fork server for the fuzz suite and the command-line tests: imports the CLI once, then runs each case in a
forked child (stdin from /dev/null, optionally under a memory limit) with a timeout, and reports its exit code,
output, time and peak memory. Forking from a warm process costs milliseconds where a fresh interpreter (torch
import) costs seconds; every case is still a separate process.

Protocol: one JSON request per line on stdin {"args", "cwd", "env", "timeout", "memory" (bytes the case may add to
the server's address space, or null for no limit)}; one JSON reply per line on stdout {"rc", "stdout", "stderr",
"seconds", "max_rss", "timed_out"}. ZYGOTE_THREADS, when set, is the torch thread count of the server (and so of
every case that does not set its own).
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(request: dict, out_path: str, err_path: str) -> None:
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    tempfile.tempdir = None  # read TMPDIR again
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        target = os.open(path, flags, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the child's stdin: /dev/null, not the request pipe)
    if request.get("memory") is not None:
        limit = _vm_bytes() + int(request["memory"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    from deploy_nas.cli import main
    from deploy_nas.cli_options import main_one_line

    code = 0
    try:
        main_one_line(main, args=request["args"], prog_name="deploy-nas")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 (a traceback is what the fuzz suite looks for)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    import torch

    if os.environ.get("ZYGOTE_THREADS"):
        torch.set_num_threads(int(os.environ["ZYGOTE_THREADS"]))
    import deploy_nas.cli  # noqa: F401  (warm: the CLI and its lazy imports of the core)
    import deploy_nas.export.pipeline  # noqa: F401
    from deploy_nas.supernets import default_supernet

    default_supernet()
    capture = os.environ["FUZZ_CAPTURE"]  # outside every directory a case is checked for new files
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        out_path, err_path = os.path.join(capture, "out"), os.path.join(capture, "err")
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request, out_path, err_path)
        timed_out = False
        deadline = start + float(request["timeout"])
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                timed_out = True
                break
            time.sleep(0.002)
        rc = os.waitstatus_to_exitcode(status)
        reply = {"rc": rc, "seconds": time.monotonic() - start, "max_rss": usage.ru_maxrss * 1024,
                 "timed_out": timed_out}
        for key, path in (("stdout", out_path), ("stderr", err_path)):
            with open(path, errors="replace") as f:
                reply[key] = f.read()[-(1 << 21):]
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
