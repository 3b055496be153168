"""`deploy-nas search --resume` of another search (a hostile try, 2026-12-07, findings 2 to 4).

2. A resume with another supernet (a 64 px one for a 32 px search) reused the latencies measured on the first one's
   subnets (measured.json is keyed by config id alone), printed them as measured, and fitted the predictor on them.
3. A resume with a narrower --params-range picked an evolution winner outside it (the restored generations were
   drawn under the old constraints, and only latency was checked), while pareto.json recorded the new range.
4. A resume took another supernet, seed, population, budget, ranges or data silently (only the latency settings
   were compared), pareto.json recorded none of them, and a resume in a sub-space was called a "damaged" log.

Now search.json records the settings that decide the results when a search starts, pareto.json repeats them, and a
resume under others is one `error:` line naming each setting that differs (recorded and given) and the fix, exit
2, before anything is measured, the directory unchanged; a search from before the record is resumed under the
settings given and says so; each method's winner meets every constraint of the run.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.search.test_search_settings import _copy, _snapshot

LOG, RECORD = "generations.jsonl", "search.json"
FIX = "resume with the options it recorded (search.json), or search into a new --out"


def _args(supernet_dir: Path, out: Path, changed: dict[str, str] | None = None) -> list:
    options = {"--backend": "torch", "--threads": "1", "--latency-budget-ms": "1000", "--population": "4",
               "--measure": "8", "--generations": "1", **(changed or {})}
    return ["search", "--supernet", supernet_dir, *(x for pair in options.items() for x in pair), "--out", out]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_supernet_dir) -> Path:
    """One generation of a tiny search on torch; each test resumes a copy."""
    out = tmp_path_factory.mktemp("record") / "s"
    r = run(*_args(tiny_supernet_dir, out))
    assert r.returncode == 0, r.stderr
    return out


def _refused(r, out: Path, before: dict) -> str:
    """The one error line of a resume refused before anything was measured or written."""
    err = one_error_line(r)
    assert "measure 1/" not in r.stdout and _snapshot(out) == before, r.stdout[-2000:]
    return err


def test_the_settings_are_recorded_and_pareto_json_repeats_them(searched):
    record = json.loads((searched / RECORD).read_text())
    assert record["supernet"]["family"] == "autoformer" and re.fullmatch("[0-9a-f]{64}", record["supernet"]["sha256"])
    assert record["space"]["name"] == "autoformer-tiny" and record["img_size"] == 32
    assert record["data"]["task"] == "embedded" and record["data"]["val"] > 0 and record["data"]["test"] > 0
    assert record["data"]["sha256"] is None  # rendered by float kernels: told by its counts and the image size
    assert (record["seed"], record["population"], record["generations"], record["measure"]) == (0, 4, 1, 8)
    assert (record["latency_budget_ms"], record["params_range"], record["flops_range"]) == (1000.0, None, None)
    assert json.loads((searched / "pareto.json").read_text())["settings"] == record


@pytest.fixture(scope="module")
def other_supernets(tmp_path_factory, tiny_space) -> dict[str, Path]:
    """The search's space with other weights, and a 64 px version of it."""
    from deploy_nas.supernets import save_supernet
    from tests.conftest import make_supernet

    wide = dataclasses.replace(tiny_space, name="tiny64", img_size=64)
    root = tmp_path_factory.mktemp("others")
    return {name: save_supernet(make_supernet(space, seed=7), root / name, space)
            for name, space in (("weights", tiny_space), ("64px", wide))}


@pytest.mark.parametrize("other", ["weights", "64px"])
def test_a_resume_with_another_supernet_is_refused_before_anything_is_measured(searched, tmp_path, other_supernets,
                                                                               other):
    out = _copy(searched, tmp_path)
    before = _snapshot(out)
    err = _refused(run(*_args(other_supernets[other], out, {"--generations": "3"}), "--resume"), out, before)
    recorded = json.loads((out / RECORD).read_text())["supernet"]["sha256"][:12]
    if other == "64px":  # the space and image size alone refuse it, before the supernet or the data is read
        assert "image size: recorded 32, given 64" in err and "--space: recorded 'autoformer-tiny'" in err, err
    else:
        assert f"--supernet: recorded 'autoformer' supernet sha256 {recorded}, given 'autoformer' supernet sha256 " \
            in err and "image size" not in err, err
    assert err.endswith(FIX), err


def test_a_resume_with_other_settings_is_refused_naming_each(searched, tmp_path, tiny_supernet_dir):
    out = _copy(searched, tmp_path)
    before = _snapshot(out)
    changed = {"--seed": "5", "--population": "6", "--latency-budget-ms": "500", "--params-range": "1,10000000",
               "--measure": "9", "--generations": "2"}
    err = _refused(run(*_args(tiny_supernet_dir, out, changed), "--resume"), out, before)
    for named in ("--seed: recorded 0, given 5", "--population: recorded 4, given 6",
                  "--latency-budget-ms: recorded 1000 ms, given 500 ms",
                  "--params-range: recorded none, given 1..10,000,000", "--measure: recorded 8, given 9"):
        assert named in err, err
    assert "--supernet" not in err and "--data" not in err and "generations" not in err and err.endswith(FIX)


def test_a_resume_on_other_data_is_refused(searched, tmp_path, tiny_supernet_dir):
    from PIL import Image

    data = tmp_path / "data"
    for split in ("val", "test"):
        for label in ("a", "b"):
            (data / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), (200 if label == "a" else 20, 90, 40)).save(data / split / label / "0.png")
    out = _copy(searched, tmp_path)
    before = _snapshot(out)
    err = _refused(run(*_args(tiny_supernet_dir, out, {"--data": str(data)}), "--resume"), out, before)
    assert re.search(r"--data: recorded the embedded task \(\d+ val, \d+ test images\), given "
                     r"image folders of 2 classes \(2 val, 2 test images; sha256 [0-9a-f]{12}\)", err), err


@pytest.mark.parametrize("recorded", [True, False])
def test_a_resume_in_a_sub_space_is_another_search_not_a_damaged_log(searched, tmp_path, tiny_supernet_dir, tiny_space,
                                                                     recorded):
    out = _copy(searched, tmp_path)
    if not recorded:  # a search from before the record: the log alone cannot tell, so both causes are named
        (out / RECORD).unlink(missing_ok=True)
    logged = json.loads((out / LOG).read_text().splitlines()[0])["population"][0]["embed_dim"]
    sub = {**tiny_space.to_dict(), "name": "tinysub", "embed_dim": [e for e in tiny_space.embed_dim if e != logged]}
    (tmp_path / "tinysub.json").write_text(json.dumps(sub))
    before = _snapshot(out)
    r = run("search", "--space", tmp_path / "tinysub.json", *_args(tiny_supernet_dir, out)[1:], "--resume")
    err = _refused(r, out, before)
    if recorded:
        assert "--space: recorded 'autoformer-tiny' (sha256 " in err and "given 'tinysub' (sha256 " in err, err
        assert "damaged" not in err and err.endswith(FIX)
    else:
        assert f"{LOG} line 1: population entry 0 is no config of this search" in err, err
        assert "a search of another --space or supernet (resume with those, or search into a new --out)" in err


def test_a_search_that_recorded_no_settings_resumes_under_those_given_and_its_winners_meet_them(
        searched, tmp_path, tiny_supernet_dir):
    """An older search (no search.json) resumed with a narrower --params-range: its logged generation was drawn
    without one, so the evolution's candidates outside the range must not win; the resume says what it assumed."""
    from deploy_nas.supernets import load_supernet_dir

    out = _copy(searched, tmp_path)
    (out / RECORD).unlink(missing_ok=True)
    supernet, _ = load_supernet_dir(tiny_supernet_dir)
    count = lambda d: supernet.param_count(_load(d))  # noqa: E731
    best = count(json.loads((out / "best.json").read_text()))
    others = [count(d) for d in json.loads((out / LOG).read_text().splitlines()[0])["population"]]
    below, above = [n for n in others if n < best], [n for n in others if n > best]
    low, high = (0, max(below)) if below else (min(above), 10**9)  # the best logged config falls outside
    r = run(*_args(tiny_supernet_dir, out, {"--params-range": f"{low},{high}"}), "--resume")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "pareto.json").read_text())
    for method in ("evolution", "random"):
        assert low <= count(result[method]["winner"]["config"]) <= high, method
        assert all(low <= count(f["config"]) <= high for f in result[method]["finalists"]), method
    assert "records no search settings" in r.stdout
    assert "recorded no settings" in result["settings_note"] and result["settings"]["params_range"] == [low, high]
    assert json.loads((out / RECORD).read_text())["params_range"] == [low, high]


def _load(d: dict):
    from deploy_nas.spaces import load_config

    return load_config(d, "autoformer")


def _size_ms(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e5


def test_the_winner_meets_the_ranges_even_when_better_candidates_do_not(tiny_supernet, tiny_space):
    """Defence in depth: candidates scored outside the params range (drawn under other constraints) never win."""
    import random

    from deploy_nas.data import embedded_splits
    from deploy_nas.materialize import materialize
    from deploy_nas.search import Search, SearchConstraints, UnmetConstraints

    rng = random.Random(0)
    cfgs = sorted({c.id: c for c in (tiny_space.sample(rng) for _ in range(30))}.values(),
                  key=tiny_supernet.param_count)
    counts = [tiny_supernet.param_count(c) for c in cfgs]
    high = counts[len(cfgs) // 2]
    scores = {c.id: (c, i / len(cfgs)) for i, c in enumerate(cfgs)}  # the larger, the more accurate
    test = embedded_splits(tiny_space.img_size, tiny_space.in_chans)["test"]
    search = Search(tiny_supernet, tiny_space, {"test": type(test)(test.images[:8], test.labels[:8])}, _size_ms,
                    SearchConstraints(1e9, params_range=(0, high)), log=lambda m: None)
    search.predictor.fit(cfgs, [_size_ms(materialize(tiny_supernet, c)) for c in cfgs])
    out = search.finalists(scores)
    assert counts[-1] > high  # the most accurate candidates are outside the range
    assert all(tiny_supernet.param_count(_load(f["config"])) <= high for f in out["finalists"])
    assert out["winner"]["meets_budget"] and tiny_supernet.param_count(_load(out["winner"]["config"])) <= high
    narrow = Search(tiny_supernet, tiny_space, {}, _size_ms, SearchConstraints(1e9, params_range=(0, counts[0] - 1)),
                    log=lambda m: None)
    with pytest.raises(UnmetConstraints, match=r"none of the 30 subnets evaluated meets --params-range 0\.\."):
        narrow.finalists(scores)


def test_check_search_settings_names_each_difference_and_refuses_a_damaged_record(tmp_path, tiny_supernet,
                                                                                  tiny_space):
    from deploy_nas.io import make_dirs, write_json_atomic
    from deploy_nas.search import (
        DamagedSearchOutput,
        EvolutionConfig,
        SearchConstraints,
        SearchSettingsMismatch,
        SearchSetup,
        check_search_settings,
    )
    from deploy_nas.search.record import search_record

    setup = SearchSetup(measure=8, evolution=EvolutionConfig.for_population(4, 1))
    given = search_record(tiny_supernet, tiny_space, {}, SearchConstraints(5.0), setup)
    out = tmp_path / "s"
    make_dirs(out)
    write_json_atomic(out / LOG, {})
    assert check_search_settings(out, True, given) is True  # no record: taken as given (the caller notes it)
    write_json_atomic(out / RECORD, {**given, "generations": 7})  # generations are not compared
    assert check_search_settings(out, True, given) is False
    write_json_atomic(out / RECORD, {**given, "supernet": "hand-edited", "flops_range": [0.5, 1.0]})
    with pytest.raises(SearchSettingsMismatch, match=r"--supernet: recorded 'hand-edited', given 'autoformer' "
                                                     r"supernet sha256 .*; --flops-range: recorded 0\.5\.\.1 GMAC, "
                                                     r"given none; resume with the options it recorded"):
        check_search_settings(out, True, given)
    for text in ("[1, 2]", json.dumps({"seed": 0}), "not json"):
        (out / RECORD).write_text(text)
        with pytest.raises(DamagedSearchOutput, match=f"{RECORD} is damaged"):
            check_search_settings(out, True, given)


def test_a_search_written_inside_another_leaves_its_resume_free(searched, tiny_supernet_dir, tmp_path):
    """`search --out S/sub` was accepted, and then `search --out S --resume` refused S, saying a resume replaces it
    whole: a search resumes in place, and what else S holds stays (2026-12-08)."""
    out = _copy(searched, tmp_path)
    assert run(*_args(tiny_supernet_dir, out / "sub")).returncode == 0
    inner = _snapshot(out / "sub")
    r = run(*_args(tiny_supernet_dir, out, {"--generations": "2"}), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((out / "generations.jsonl").read_text().splitlines()) == 2 and _snapshot(out / "sub") == inner


def test_a_resume_asking_for_fewer_generations_records_the_ones_its_results_use(tiny_supernet_dir, tmp_path):
    """Resumed with fewer --generations than logged, a search keeps the log's (and says so), but search.json
    recorded the smaller count while pareto.json and generations.jsonl held the larger (2026-12-08)."""
    out = tmp_path / "s"
    assert run(*_args(tiny_supernet_dir, out, {"--generations": "2"})).returncode == 0
    r = run(*_args(tiny_supernet_dir, out, {"--generations": "1"}), "--resume")
    assert r.returncode == 0 and "the log holds 2 generations, more than the 1 asked for" in r.stdout, r.stderr
    assert json.loads((out / RECORD).read_text())["generations"] == 2
    assert json.loads((out / "pareto.json").read_text())["settings"]["generations"] == 2
