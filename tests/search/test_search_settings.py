"""What a search's latencies hold for, and constraints nothing meets (a hostile try of `deploy-nas search`).

1. `--resume` under another --backend, --precision or --threads reused the latencies measured before (each
   `measure i/8` line repeated them), so the predictor and the finalists mixed two backends, and pareto.json said
   nothing of either. Now latency.json and pareto.json record the settings (threads as resolved) and such a resume
   is one `error:` line naming both, exit 2, nothing changed; a search from before the record resumes, and says so.
2. A --flops-range or --params-range that no subnet meets drew thousands of subnets (counting the FLOPs of each,
   ~25 min) or measured everything first, then failed leaving generations.jsonl and measured.json behind, so the
   same command then asked for --resume. Now a range outside the space's min..max subnets is refused before anything
   is measured, one inside it that no draw meets after bounded work, and nothing is written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run

SETTINGS, LOG, MEASURED = "latency.json", "generations.jsonl", "measured.json"
TORCH_1 = {"backend": "torch", "precision": "fp32", "threads": 1}


def _args(supernet_dir: Path, out: Path, *extra, generations: int = 1, budget: str = "1000") -> list:
    return ["search", "--supernet", supernet_dir, "--latency-budget-ms", budget, "--generations", str(generations),
            "--population", "4", "--measure", "8", "--out", out, *extra]


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def torch_search(tmp_path_factory, tiny_supernet_dir) -> Path:
    """One generation measured on torch fp32 with 1 thread; each test resumes a copy."""
    out = tmp_path_factory.mktemp("settings") / "s"
    r = run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1"))
    assert r.returncode == 0, r.stderr
    return out


def _copy(done: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(done, out)
    return out


def test_the_latency_settings_are_recorded(torch_search):
    assert json.loads((torch_search / SETTINGS).read_text()) == TORCH_1
    assert json.loads((torch_search / "pareto.json").read_text())["latency"] == TORCH_1


@pytest.mark.parametrize("other, named", [
    (("--backend", "onnxruntime", "--threads", "1"), "onnxruntime fp32 with 1 thread"),
    (("--backend", "openvino", "--precision", "fp16", "--threads", "1"), "openvino fp16 with 1 thread"),
])
def test_a_resume_under_other_latency_settings_is_refused_naming_both(torch_search, tmp_path, tiny_supernet_dir,
                                                                      other, named):
    out = _copy(torch_search, tmp_path)
    before = _snapshot(out)
    r = run(*_args(tiny_supernet_dir, out, *other, generations=2), "--resume")
    err = one_error_line(r)
    assert "torch fp32 with 1 thread" in err and named in err, err
    assert "same --backend, --precision and --threads" in err and "new --out" in err
    assert "measure 1/" not in r.stdout and _snapshot(out) == before


def test_a_resume_under_the_same_settings_continues(torch_search, tmp_path, tiny_supernet_dir):
    out = _copy(torch_search, tmp_path)
    r = run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", generations=2), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed after generation 0" in r.stdout and len((out / LOG).read_text().splitlines()) == 2
    assert json.loads((out / "pareto.json").read_text())["latency"] == TORCH_1


def test_a_search_that_recorded_no_settings_resumes_under_those_given_and_says_so(torch_search, tmp_path,
                                                                                  tiny_supernet_dir):
    """Written before the settings were recorded: nothing tells what it measured on, so it is resumed and its
    latencies are taken as measured under the settings given, which are recorded from then on."""
    out = _copy(torch_search, tmp_path)
    (out / SETTINGS).unlink()
    r = run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", generations=2), "--resume")
    assert r.returncode == 0, r.stderr
    assert "records no latency settings" in r.stdout
    result = json.loads((out / "pareto.json").read_text())
    assert result["latency"] == TORCH_1 and "recorded no latency settings" in result["latency_note"]
    assert json.loads((out / SETTINGS).read_text()) == TORCH_1


@pytest.mark.parametrize("text", ["[1, 2]", '{"backend": "torch"}', "not json",
                                  '{"backend": "torch", "precision": "fp32", "threads": true}'])
def test_damaged_settings_are_refused_naming_the_file(torch_search, tmp_path, tiny_supernet_dir, text):
    out = _copy(torch_search, tmp_path)
    (out / SETTINGS).write_text(text)
    before = _snapshot(out)
    err = one_error_line(run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", generations=2),
                             "--resume"))
    assert f"{SETTINGS} is damaged" in err and _snapshot(out) == before


def test_threads_are_compared_as_resolved(tmp_path, tiny_space):
    from deploy_nas.export.backends.base import default_threads
    from deploy_nas.export.latency import BackendLatency
    from deploy_nas.io import make_dirs, write_json_atomic
    from deploy_nas.search import LatencySettingsMismatch, check_latency_settings, check_resume, latency_settings

    assert latency_settings(BackendLatency("onnxruntime", threads=1))["threads"] == 1
    assert latency_settings(BackendLatency("onnxruntime"))["threads"] == default_threads()  # none given: the cores
    assert latency_settings(lambda model: 1.0) is None  # a latency function that cannot say
    out = tmp_path / "s"
    make_dirs(out)
    write_json_atomic(out / SETTINGS, TORCH_1)
    write_json_atomic(out / MEASURED, {})
    assert check_latency_settings(out, True, dict(TORCH_1)) is False
    mismatch = "torch fp32 with 1 thread; this one would measure on torch fp32 with 2 threads"
    with pytest.raises(LatencySettingsMismatch, match=mismatch):
        check_latency_settings(out, True, {**TORCH_1, "threads": 2})
    # given the latency function, check_resume refuses too (before a caller reads any data)
    assert check_resume(out, True, tiny_space, "autoformer", BackendLatency("torch", threads=1)) == ({}, None)
    with pytest.raises(LatencySettingsMismatch, match="this one would measure on onnxruntime fp32 with 1 thread"):
        check_resume(out, True, tiny_space, "autoformer", BackendLatency("onnxruntime", threads=1))


# ------------------------------------------------------------------------------------ constraints nothing meets

def test_a_flops_range_outside_the_space_is_refused_before_any_work(tmp_path, tiny_supernet_dir):
    out = tmp_path / "s"
    r = run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", "--flops-range", "100,200"),
            timeout=120)  # before: thousands of subnets' FLOPs counted (~25 min)
    err = one_error_line(r)
    assert "--flops-range 100..200 GMAC is outside what this space spans (" in err and " GMAC, from its min" in err
    assert "measure 1/" not in r.stdout and not out.exists()


def test_a_params_range_outside_the_space_is_refused_and_the_same_command_says_so_again(tmp_path,
                                                                                       tiny_supernet_dir):
    out = tmp_path / "s"
    args = _args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", "--params-range", "1,2")
    for _ in range(2):  # before: the first left generations.jsonl and measured.json, the second asked for --resume
        r = run(*args)
        err = one_error_line(r)
        assert "meets --params-range 1..2 parameters" in err and "widen" in err, err
        assert "measure 1/" not in r.stdout and not out.exists()


def test_a_params_range_inside_the_space_that_no_subnet_meets_writes_nothing(tmp_path, tiny_supernet_dir):
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import load_supernet_dir

    supernet, _ = load_supernet_dir(tiny_supernet_dir)
    space = SPACES.get("autoformer-tiny")
    low, high = (supernet.param_count(space.sample(None, end)) for end in ("min", "max"))
    middle = (low + high) // 2 + 1  # a count between the ends that no subnet has (odd: the counts here are even)
    assert middle % 2 == 1 and low % 2 == 0 and high % 2 == 0
    out = tmp_path / "s"
    r = run(*_args(tiny_supernet_dir, out, "--backend", "torch", "--threads", "1", "--params-range",
                   f"{middle},{middle}"), timeout=120)
    err = one_error_line(r)
    assert f"meets --params-range {middle:,}..{middle:,} parameters" in err and "widen" in err, err
    assert "measure 1/" not in r.stdout and not out.exists()


def _size_ms(model) -> float:
    """A latency that grows with the subnet (no backend: the test is about the constraints)."""
    return sum(p.numel() for p in model.parameters()) / 1e5


def _search(supernet, space, constraints):
    from deploy_nas.search import EvolutionConfig, Search, SearchSetup

    setup = SearchSetup(measure=8, evolution=EvolutionConfig.for_population(4, 1))
    return Search(supernet, space, {}, _size_ms, constraints, setup, log=lambda m: None)


def test_a_flops_range_inside_the_space_that_no_draw_meets_ends_after_bounded_work(tmp_path, tiny_supernet,
                                                                                  tiny_space, monkeypatch):
    import deploy_nas.search as search_module
    from deploy_nas.search import SearchConstraints, UnmetConstraints

    monkeypatch.setattr(search_module, "FLOPS_PROBE", 4)
    probe = _search(tiny_supernet, tiny_space, SearchConstraints(1e9))
    low, high = (probe.gmacs(tiny_space.sample(None, end)) for end in ("min", "max"))
    middle = (low + high) / 2
    search = _search(tiny_supernet, tiny_space, SearchConstraints(1e9, flops_range=(middle, middle * (1 + 1e-9))))
    with pytest.raises(UnmetConstraints, match=r"none of \d+ distinct random subnets meets --flops-range .* GMAC "
                                               r"\(the 4 counted: .*widen"):
        search.run(tmp_path / "s")
    assert len(search._gmacs) == 2 + 4  # the space's two ends, then the bounded draws
    assert not search._measured and not (tmp_path / "s").exists()


def test_a_budget_and_ranges_that_no_subnet_meets_together_write_nothing(tmp_path, tiny_supernet, tiny_space):
    """Each is met on its own (the min subnet fits the budget; the largest subnets, the params range), not both: the
    first population is drawn before anything is written, so the failure leaves no files to --resume."""
    from deploy_nas.materialize import materialize
    from deploy_nas.search import SearchConstraints, UnmetConstraints

    smallest, largest = (tiny_space.sample(None, end) for end in ("min", "max"))
    budget = _size_ms(materialize(tiny_supernet, smallest)) * 1.05
    top = tiny_supernet.param_count(largest)
    search = _search(tiny_supernet, tiny_space, SearchConstraints(budget, params_range=(int(top * 0.9), top)))
    with pytest.raises(UnmetConstraints, match=r"predicted latency within .* ms and --params-range .*raise "
                                               "--latency-budget-ms or widen the ranges"):
        search.run(tmp_path / "s")
    assert search._measured and not (tmp_path / "s").exists()


def test_a_params_range_below_the_min_subnet_is_searched_when_subnets_meet_it():
    """PSViT's min subnet puts its one layer in the widest stage: subnets with one layer in the first stage have
    fewer params, and a range of theirs was refused as 'outside what this space spans'."""
    from deploy_nas.family import FAMILIES
    from deploy_nas.search import Search, SearchConstraints
    from deploy_nas.spaces import SPACES

    space = SPACES.get("psvit-tiny-2d")
    supernet = FAMILIES.get("psvit").build_supernet(space, 0)
    smallest = supernet.param_count(space.sample(None, "min"))
    below = (smallest // 2, smallest - 1)
    Search(supernet, space, {}, lambda m: 1.0, SearchConstraints(10.0, below, None)).check_ranges()  # no error
