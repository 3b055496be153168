"""`deploy-nas search --resume` on a damaged or hand-edited output directory (a hostile try, 2026-12-07): every
generation of `generations.jsonl` and every latency of `measured.json` is checked before any work; a bad one is one
`error:` line naming the file (the log's line, the latency's entry), exit 2, and nothing in the directory changes.
Before the fix these gave a traceback (an empty population, NaN latencies), a confusing preset message (a string
as a population entry), or were taken as they were (generation 10**18 ran nothing and exited 0; latencies of -1 ms
made a table that met the budget and a pareto.json with a bare NaN)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy_nas.errors import DeployNASError
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line

LOG, MEASURED = "generations.jsonl", "measured.json"


def _args(supernet_dir: Path, out: Path, generations: int) -> list:
    return ["search", "--supernet", supernet_dir, "--backend", "torch", "--threads", "1", "--latency-budget-ms",
            "1000", "--population", "4", "--measure", "8", "--generations", str(generations), "--out", out]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_supernet_dir) -> Path:
    """A search of two generations, run once; each test damages a copy."""
    out = tmp_path_factory.mktemp("resume") / "s"
    r = run(*_args(tiny_supernet_dir, out, 2))
    assert r.returncode == 0, r.stderr
    assert len((out / LOG).read_text().splitlines()) == 2
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(finished, out)  # copy2: contents and times
    return out


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def _write_rows(out: Path, rows: list) -> None:
    (out / LOG).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _damage_log(edit):
    def damage(out: Path) -> None:
        rows = _rows(out)
        edit(rows)
        _write_rows(out, rows)
    return damage


def _damage_measured(value):
    def damage(out: Path) -> None:
        measured = json.loads((out / MEASURED).read_text())
        (out / MEASURED).write_text(json.dumps({k: value for k in measured}))
    return damage


def _set(rows: list, line: int, **fields) -> None:
    rows[line - 1].update(fields)


LOG_DAMAGE = {  # name: (edit of the rows, the line named)
    "empty_population": (lambda rows: rows.__setitem__(0, {"generation": 0, "evaluated": 0, "best": [],
                                                           "population": []}), 1),
    "huge_generation": (lambda rows: _set(rows, 1, generation=10**18), 1),
    "bool_generation": (lambda rows: _set(rows, 1, generation=False), 1),
    "float_generation": (lambda rows: _set(rows, 2, generation=1.0), 2),
    "skipped_generation": (lambda rows: _set(rows, 2, generation=2), 2),
    "repeated_generation": (lambda rows: _set(rows, 2, generation=0), 2),
    "preset_name_in_population": (lambda rows: _set(rows, 1, population=["max"]), 1),
    "path_in_population": (lambda rows: _set(rows, 2, population=["/etc/hostname"]), 2),
    "number_in_population": (lambda rows: rows[1]["population"].append(7), 2),
    "config_outside_the_space": (lambda rows: rows[0]["population"][0].update(embed_dim=12345), 1),
    "population_not_a_list": (lambda rows: _set(rows, 1, population={"depth": 4}), 1),
    "row_not_an_object": (lambda rows: rows.insert(1, [1, 2]), 2),
    "nan_fitness": (lambda rows: rows[0]["best"][0].update(fitness=float("nan")), 1),
}


@pytest.mark.parametrize("case", sorted(LOG_DAMAGE))
def test_a_damaged_log_line_is_refused_naming_it_and_nothing_changes(finished, tmp_path, tiny_supernet_dir, case):
    edit, line = LOG_DAMAGE[case]
    out = _copy(finished, tmp_path)
    _damage_log(edit)(out)
    before = _snapshot(out)
    err = one_error_line(run(*_args(tiny_supernet_dir, out, 3), "--resume"))
    assert f"{LOG} line {line} is damaged" in err
    assert "Traceback" not in err and _snapshot(out) == before


def test_a_line_of_garbage_before_others_is_damage_but_a_cut_last_line_is_mended(finished, tmp_path,
                                                                                 tiny_supernet_dir):
    out = _copy(finished, tmp_path)
    text = (out / LOG).read_text().splitlines(keepends=True)
    (out / LOG).write_text(text[0] + "not json\n" + text[1])  # not what an interrupt leaves: it cuts the last line
    before = _snapshot(out)
    assert f"{LOG} line 2 is damaged" in one_error_line(run(*_args(tiny_supernet_dir, out, 3), "--resume"))
    assert _snapshot(out) == before
    (out / LOG).write_text(text[0] + '{"generation": 1, "evalu')  # what a kill in the middle of a write leaves
    r = run(*_args(tiny_supernet_dir, out, 2), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed after generation 0" in r.stdout and [row["generation"] for row in _rows(out)] == [0, 1]


MEASURED_DAMAGE = {"nan": float("nan"), "negative": -1.0, "zero": 0, "infinite": float("inf"), "bool": True,
                   "string": "1.5", "null": None, "list": [1.0], "huge_int": 10**400}


@pytest.mark.parametrize("case", sorted(MEASURED_DAMAGE))
def test_a_latency_that_is_no_latency_is_refused_naming_the_entry_and_nothing_changes(finished, tmp_path,
                                                                                      tiny_supernet_dir, case):
    out = _copy(finished, tmp_path)
    first = next(iter(json.loads((out / MEASURED).read_text())))
    _damage_measured(MEASURED_DAMAGE[case])(out)
    before = _snapshot(out)
    err = one_error_line(run(*_args(tiny_supernet_dir, out, 3), "--resume"))
    assert f"{MEASURED} is damaged: entry {first!r}" in err
    assert _snapshot(out) == before


def test_a_measured_file_of_another_shape_is_refused_and_nothing_changes(finished, tmp_path, tiny_supernet_dir):
    out = _copy(finished, tmp_path)
    measured = (out / MEASURED).read_text()
    for text in ("[1.0, 2.0]", measured.replace("{", '{"abc": 1.0, "abc": 2.0, ', 1), "[" * 100_000):
        (out / MEASURED).write_text(text)
        before = _snapshot(out)
        assert f"{MEASURED} is damaged" in one_error_line(run(*_args(tiny_supernet_dir, out, 3), "--resume"))
        assert _snapshot(out) == before


def test_equal_latencies_leave_kendall_tau_undefined_never_a_bare_nan(finished, tmp_path, tiny_supernet_dir):
    """Latencies all alike are numbers a resume accepts, but they rank nothing: Kendall tau is null in pareto.json
    (strict JSON), "undefined" in the table."""
    out = _copy(finished, tmp_path)
    _damage_measured(1.0)(out)
    r = run(*_args(tiny_supernet_dir, out, 2), "--resume")
    assert r.returncode == 0, r.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"pareto.json holds a bare {name}")

    result = json.loads((out / "pareto.json").read_text(), parse_constant=refuse)
    assert result["predictor"]["held_out"]["kendall_tau"] is None and "Kendall tau undefined" in r.stdout


def test_a_log_with_more_generations_than_asked_for_is_kept_whole(finished, tmp_path, tiny_supernet_dir):
    """A finished search resumed with fewer --generations than its log holds runs none and keeps them all (as it
    always did), and says so."""
    out = _copy(finished, tmp_path)
    log = (out / LOG).read_text()
    r = run(*_args(tiny_supernet_dir, out, 1), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed after generation 1" in r.stdout and "more than the 1 asked for" in r.stdout
    assert (out / LOG).read_text() == log


def test_evolution_restore_refuses_rows_that_do_not_continue_it():
    from deploy_nas.search.evolution import Evolution, EvolutionConfig
    from deploy_nas.spaces import SPACES, load_config

    space = SPACES.get("autoformer-tiny")
    evo = Evolution(space, lambda c: c.embed_dim, lambda c: True, EvolutionConfig.for_population(4, 2))
    load = lambda d: load_config(d, "autoformer")  # noqa: E731
    cfg = space.sample(None, "min").to_dict()
    best = [{"config": cfg, "fitness": 1.0}]
    for rows in ([{"generation": 0, "evaluated": 0, "best": [], "population": []}],
                 [{"generation": 1, "evaluated": 1, "best": best, "population": [cfg]}],
                 [{"generation": 0, "evaluated": 1, "best": best, "population": ["min"]}]):
        with pytest.raises(DeployNASError, match="logged generation 0"):
            evo.restore(rows, load)
