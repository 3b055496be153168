"""What a resumed search leaves in its directory (a tester's report, two findings).

1. A finished 4-generation search resumed with `--generations 9 --resume` and interrupted at generation 5 left a
   6-line generations.jsonl and a search.json of 9 generations beside the 4-generation run's best.json, pareto.json
   and pareto.png, which looked current. Now a resume that adds generations removes those results before it
   records the longer search (an interrupted resume holds none, as any interrupted search, and the CLI says to
   continue with --resume); they are written anew when it ends, as before. A resume with nothing to add keeps
   rewriting them as it always did.
2. A resumed search reported `predictor.repeatability: null` and its table dropped "timings repeat", with nothing
   saying why: the per-pass times of the subnets measured before were not kept. Now measured_passes.json keeps them
   (measured.json stays the map of medians every version reads), so a resume reports what the search it continues
   reported; a search from before that file says in pareto.json and in the table why it reports none.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy_nas.search import DamagedSearchOutput, EvolutionConfig, Search, SearchConstraints, SearchSetup, search_table
from tests.cli.test_extract_info import EXE, run

LOG, RECORD, MEASURED, PASSES = "generations.jsonl", "search.json", "measured.json", "measured_passes.json"
RESULTS = ("best.json", "pareto.json", "pareto.png")


def _size_ms(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e5


class PassesLatency:
    """A latency that grows with a subnet's size, 'timed' like BackendLatency: several models in 5 interleaved
    passes whose p50s scatter around it (a fixed function of the model: the median is the size itself), one model
    in one pass. Deterministic, so a resumed search and an uninterrupted one can be compared exactly."""

    def __call__(self, model) -> float:
        return _size_ms(model)

    def many_passes(self, models) -> list[list[float]]:
        if len(models) < 2:
            return [[self(m)] for m in models]
        return [[ms * (1 + 0.02 * ((k + int(ms * 1e4)) % 5 - 2)) for k in range(5)] for ms in map(self, models)]


class InterruptedSearch(Search):
    """A search stopped (KeyboardInterrupt, as a Ctrl-C) when it would score a generation while its log holds
    `stop_at` lines."""

    stop_at = 0

    def val_top1_many(self, cfgs):
        log = self._out / LOG
        if log.is_file() and len(log.read_text().splitlines()) >= self.stop_at:
            raise KeyboardInterrupt
        return super().val_top1_many(cfgs)


@pytest.fixture(scope="module")
def data(tiny_space):
    from deploy_nas.data import embedded_splits

    full = embedded_splits(tiny_space.img_size, tiny_space.in_chans)
    return {name: type(full[name])(full[name].images[:16], full[name].labels[:16]) for name in ("val", "test")}


def _search(supernet, space, data, generations: int, cls=Search, messages: list | None = None) -> Search:
    setup = SearchSetup(measure=8, finalists=2, evolution=EvolutionConfig.for_population(4, generations))
    log = messages.append if messages is not None else (lambda m: None)
    return cls(supernet, space, data, PassesLatency(), SearchConstraints(1e9), setup, log=log)


def _run(supernet, space, data, out: Path, generations: int, resume: bool = False, **kw) -> tuple[dict, list[str]]:
    messages: list[str] = []
    result = _search(supernet, space, data, generations, messages=messages, **kw).run(out, resume=resume)
    return result, messages


def _pareto(out: Path) -> dict:
    result = json.loads((out / "pareto.json").read_text())
    result.pop("scored_per_rank")  # what this process scored: a resume re-scores the generations it replays
    return result


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_supernet, tiny_space, data) -> Path:
    """A finished 2-generation search (library, deterministic latencies); each test resumes a copy."""
    out = tmp_path_factory.mktemp("finished") / "s"
    _run(tiny_supernet, tiny_space, data, out, 2)
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_supernet, tiny_space, data) -> Path:
    """The same search run for 4 generations at once: what a resume to 4 must end with."""
    out = tmp_path_factory.mktemp("whole") / "s"
    _run(tiny_supernet, tiny_space, data, out, 4)
    return out


def _copy(done: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(done, out)
    return out


def test_an_interrupted_resume_holds_no_results_of_the_shorter_search(finished, uninterrupted, tmp_path,
                                                                      tiny_supernet, tiny_space, data):
    out = _copy(finished, tmp_path)
    # more generations, interrupted in the first one added (generation 3 of 4, after generation 2 was logged)
    search = _search(tiny_supernet, tiny_space, data, 4, cls=InterruptedSearch, messages=(messages := []))
    search._out, search.stop_at = out, 3
    with pytest.raises(KeyboardInterrupt):
        search.run(out, resume=True)
    assert len((out / LOG).read_text().splitlines()) == 3
    assert json.loads((out / RECORD).read_text())["generations"] == 4
    assert not any((out / name).exists() for name in RESULTS), sorted(p.name for p in out.iterdir())
    assert "removed best.json, pareto.json, pareto.png of the 2-generation search" in "\n".join(messages)
    # what the CLI tells the user then: continue with --resume (the directory holds the log and measured.json)
    assert (out / LOG).is_file() and (out / MEASURED).is_file()
    # the resume that ends writes the results anew: those of the same search run without a break
    result, _ = _run(tiny_supernet, tiny_space, data, out, 4, resume=True)
    assert (out / LOG).read_text() == (uninterrupted / LOG).read_text()
    assert (out / "best.json").read_bytes() == (uninterrupted / "best.json").read_bytes()
    assert _pareto(out) == _pareto(uninterrupted) and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert result["settings"]["generations"] == 4


def test_a_resume_with_nothing_to_add_rewrites_the_same_results(finished, tmp_path, tiny_supernet, tiny_space,
                                                                data):
    """As it always did: the same search, the same results (its timing repeatability included, now)."""
    out = _copy(finished, tmp_path)
    best, pareto = (out / "best.json").read_bytes(), _pareto(out)
    _, messages = _run(tiny_supernet, tiny_space, data, out, 2, resume=True)
    assert not any("removed" in m for m in messages)
    assert (out / "best.json").read_bytes() == best and (out / "pareto.png").is_file()
    assert _pareto(out) == pareto


def test_a_resumed_search_reports_the_repeatability_of_the_timings_it_reuses(finished, uninterrupted, tmp_path,
                                                                            tiny_supernet, tiny_space, data):
    whole = json.loads((uninterrupted / "pareto.json").read_text())["predictor"]["repeatability"]
    assert whole is not None and whole["n"] == 7  # the min subnet is timed alone first
    out = _copy(finished, tmp_path)
    result, messages = _run(tiny_supernet, tiny_space, data, out, 4, resume=True)
    assert result["predictor"]["repeatability"] == whole
    assert json.loads((out / "pareto.json").read_text())["predictor"]["repeatability"] == whole
    assert "timings repeat with Kendall tau" in search_table(result).title
    assert any(m.startswith("timing repeatability: the even passes against the odd ones over 7") for m in messages)
    # measured.json is still the map of medians (ms by config id) that earlier versions read
    measured = json.loads((out / MEASURED).read_text())
    assert measured and all(isinstance(v, float) and v > 0 for v in measured.values())
    passes = json.loads((out / PASSES).read_text())
    assert set(passes) <= set(measured) and all(len(p) == 5 for p in passes.values() if len(p) > 1)


def test_a_search_from_before_the_passes_were_kept_says_why_it_reports_no_repeatability(finished, tmp_path,
                                                                                       tiny_supernet, tiny_space,
                                                                                       data):
    out = _copy(finished, tmp_path)
    (out / PASSES).unlink(missing_ok=True)  # as an earlier version left it: measured.json alone
    result, messages = _run(tiny_supernet, tiny_space, data, out, 3, resume=True)
    predictor = json.loads((out / "pareto.json").read_text())["predictor"]
    assert predictor["repeatability"] is None
    assert "came without the per-pass times" in predictor["repeatability_note"]
    assert "timing repeatability not known (resumed without per-pass times)" in search_table(result).title
    assert any(m.startswith("timing repeatability not known") for m in messages)
    # per-pass times that are not those of measured.json's latencies (it was edited) are not used either
    out = _copy(finished, tmp_path / "edited")
    (out / MEASURED).write_text(json.dumps({k: 1.0 for k in json.loads((out / MEASURED).read_text())}))
    result, _ = _run(tiny_supernet, tiny_space, data, out, 2, resume=True)
    assert result["predictor"]["repeatability"] is None and "repeatability_note" in result["predictor"]


@pytest.mark.parametrize("text", ["[1.0]", '{"a": 1.0}', '{"a": []}', '{"a": [1.0, -2.0]}', '{"a": [true]}',
                                  '{"a": [1.0], "a": [2.0]}', "not json"])
def test_a_damaged_passes_file_is_refused_before_any_work(finished, tmp_path, tiny_space, text):
    from deploy_nas.search import check_resume

    out = _copy(finished, tmp_path)
    (out / PASSES).write_text(text)
    with pytest.raises(DamagedSearchOutput, match=f"{PASSES} is damaged.*remove it to resume without the timing "
                                                  "repeatability"):
        check_resume(out, True, tiny_space, "autoformer")


# ------------------------------------------------------------------------------------- the command line


def _args(supernet_dir: Path, out: Path, generations: int) -> list:
    return ["search", "--supernet", str(supernet_dir), "--backend", "torch", "--threads", "1", "--latency-budget-ms",
            "1000", "--population", "4", "--measure", "8", "--generations", str(generations), "--out", str(out)]


@pytest.fixture(scope="module")
def cli_finished(tmp_path_factory, tiny_supernet_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "s"
    r = run(*_args(tiny_supernet_dir, out, 1))
    assert r.returncode == 0, r.stderr
    return out


def test_the_cli_resume_reports_the_timing_repeatability_the_search_reported(cli_finished, tmp_path,
                                                                             tiny_supernet_dir):
    first = json.loads((cli_finished / "pareto.json").read_text())["predictor"]["repeatability"]
    assert first is not None
    out = _copy(cli_finished, tmp_path)
    r = run(*_args(tiny_supernet_dir, out, 2), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed after generation 0" in r.stdout and "timings repeat with Kendall tau" in r.stdout
    assert json.loads((out / "pareto.json").read_text())["predictor"]["repeatability"] == first


@pytest.mark.slow
def test_a_cli_resume_interrupted_by_sigint_leaves_no_results_and_says_to_resume(cli_finished, tmp_path,
                                                                                 tiny_supernet_dir):
    out = _copy(cli_finished, tmp_path)
    # SIGINT as a terminal delivers it (see test_search.test_interrupted_search_keeps_its_log_and_resumes)
    proc = subprocess.Popen([EXE, *_args(tiny_supernet_dir, out, 500), "--resume"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / LOG
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue with --resume" in err, err
    done = len(log.read_text().splitlines())
    assert 2 <= done < 500 and json.loads((out / RECORD).read_text())["generations"] == 500
    assert not any((out / name).exists() for name in RESULTS), sorted(p.name for p in out.iterdir())
    r = run(*_args(tiny_supernet_dir, out, done), "--resume")  # nothing to add: the results of what was logged
    assert r.returncode == 0, r.stderr
    assert "removed" not in r.stdout and all((out / name).is_file() for name in RESULTS)
    assert json.loads((out / "pareto.json").read_text())["settings"]["generations"] == done
