"""The fuzz harness: a warm fork server (zygote.py) runs each CLI case as its own process under a memory limit and a
timeout; `fuzz_case` checks every promise of the README for it: exit 0, or 2 with one line `error: ...` (1 only for
a parity failure), bounded time and memory, and no new file anywhere but the final output (the case's directory,
its temp directory and its home are compared before and after).

Case counts: `FUZZ_EXAMPLES` per input kind (default 50: part of `make test`; `make fuzz` sets 1000 and marks the
run `slow`); the families other than the embedded default's run a third of that in `make test` (`family_settings`),
so that five families do not add many minutes to every CI run, and the full count under `make fuzz`. Hypothesis
runs derandomized in `make test` (the same cases every time: CI never flakes on a new random case) and random under
`make fuzz`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize="FUZZ_RANDOM" not in os.environ,
                    suppress_health_check=list(HealthCheck), database=None)


def family_settings(default: bool) -> settings:
    """SETTINGS for one family's cases: all of them for the embedded default's family (and under `make fuzz`), a
    third for the others."""
    full = default or "FUZZ_RANDOM" in os.environ
    return settings(SETTINGS, max_examples=EXAMPLES if full else max(10, EXAMPLES // 3))


TIMEOUT_S = 60.0
MEMORY = 2 << 30  # address space a case may add to the warm server's
MAX_RSS = 3 << 30  # peak resident memory of a case (the warm server with torch is ~0.5 GiB of it)


@dataclass
class Tally:
    """Cases and outcomes per input kind, printed at the end of the session (the numbers the closing note quotes)."""

    counts: dict = field(default_factory=dict)

    def add(self, kind: str, rc: int) -> None:
        self.counts.setdefault(kind, {}).setdefault(rc, 0)
        self.counts[kind][rc] += 1


TALLY = Tally()


class Zygote:
    def __init__(self, home: Path, tmp: Path, capture: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
               "FUZZ_CAPTURE": str(capture), "ZYGOTE_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, args: list[str], cwd: Path, timeout: float = TIMEOUT_S) -> dict:
        self.proc.stdin.write(json.dumps({"args": [str(a) for a in args], "cwd": str(cwd), "timeout": timeout,
                                          "memory": MEMORY}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# Persistent caches of libraries, shared by every program that uses them and not temporaries of this tool, are not
# counted as stray files: torch creates $TMPDIR/torchinductor_<user> when an optimizer is constructed (torch 2.14);
# matplotlib keeps its font list in ~/.cache/matplotlib and ~/.config/matplotlib (the search's Pareto plot).
LIBRARY_CACHES = ("torchinductor_", "/.cache/matplotlib", "/.config/matplotlib")


def snapshot(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in [root, *root.rglob("*")]
            if not any(c in str(p) for c in LIBRARY_CACHES) and not str(p).endswith(("/.cache", "/.config"))}


@dataclass
class Workspace:
    zygote: Zygote
    root: Path  # inputs/ and cwd/ live here
    home: Path
    tmp: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def out(self) -> Path:
        return self.cwd / "out"

    def case(self, kind: str, args: list, parity_may_fail: bool = False, timeout: float = TIMEOUT_S,
             in_place: bool = False) -> dict:
        """Run one case and assert the promises; returns the reply (the output directory is removed after).
        `in_place`: the output existed before (a deployment directory that export/parity/bench update)."""
        if not in_place:
            shutil.rmtree(self.out, ignore_errors=True)
        try:
            before = snapshot(self.root, self.home, self.tmp)
            reply = self.zygote.run(args, self.cwd, timeout)
            TALLY.add(kind, reply["rc"])
            self._check(kind, args, reply, before, parity_may_fail, timeout, in_place)
        finally:
            shutil.rmtree(self.out, ignore_errors=True)
        return reply

    def _check(self, kind: str, args: list, reply: dict, before: set[str], parity_may_fail: bool, timeout: float,
               in_place: bool) -> None:
        where = f"{kind} case {args!r}: rc {reply['rc']}\nstdout: {reply['stdout'][-1500:]}\nstderr: " \
                f"{reply['stderr'][-3000:]}"
        assert not reply["timed_out"], f"more than {timeout} s: {where}"
        assert reply["max_rss"] < MAX_RSS, f"{reply['max_rss'] / 2**30:.2f} GiB resident: {where}"
        allowed = {0, 2} | ({1} if parity_may_fail else set())
        assert reply["rc"] in allowed, where
        errors = [ln for ln in reply["stderr"].splitlines() if ln.startswith("error:")]
        others = [ln for ln in reply["stderr"].splitlines() if ln.strip() and not ln.startswith(("warning:", "note:"))]
        if reply["rc"] == 0:
            assert not errors, where
        else:
            assert len(errors) == 1 and errors == others and len(errors[0]) < 2500, where
        new = snapshot(self.root, self.home, self.tmp) - before
        stray = sorted(p for p in new if not (p == str(self.out) or p.startswith(str(self.out) + os.sep)))
        assert not stray, f"new files outside the output: {stray[:5]}\n{where}"
        if reply["rc"] == 2 and not in_place:
            assert not self.out.exists() or self.out.is_dir() and not any(self.out.iterdir()), where


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    base = tmp_path_factory.mktemp("fuzz")
    home, tmp = base / "home", base / "tmp"
    for d in (home, tmp, base / "inputs", base / "cwd"):
        d.mkdir()
    zygote = Zygote(home, tmp, tmp_path_factory.mktemp("fuzz-capture"))
    yield Workspace(zygote, base, home, tmp)
    zygote.close()


def pytest_sessionfinish(session) -> None:
    """Under pytest-xdist, a worker hands its tally to the controller (merged in tests/conftest.py)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz_tally"] = json.dumps(
            {kind: {str(rc): n for rc, n in c.items()} for kind, c in TALLY.counts.items()})


def merge_tally(encoded: str) -> None:
    for kind, counts in json.loads(encoded).items():
        for rc, n in counts.items():
            TALLY.counts.setdefault(kind, {}).setdefault(int(rc), 0)
            TALLY.counts[kind][int(rc)] += n


def summary_line() -> str | None:
    """The case counts per input kind and exit code (printed at the end of the run by tests/conftest.py)."""
    if not TALLY.counts:
        return None
    return "fuzz cases per input kind (exit code: count): " + "; ".join(
        f"{kind} {sum(c.values())} ({', '.join(f'{rc}: {n}' for rc, n in sorted(c.items()))})"
        for kind, c in sorted(TALLY.counts.items()))
