"""Shared fixtures (small supernets with weights scaled so logits are O(1): a 1e-5 check then means something), and
the collection hook that turns an unmet requirement (marker openvino / tensorrt / gpu) into a skip whose reason is
the backend's own `unavailable_reason()`."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from deploy_nas.spaces import SPACES
from deploy_nas.spaces.autoformer import AutoFormerSpace
from deploy_nas.supernets.autoformer import AutoFormerArch, AutoFormerSupernet

FIXTURES = Path(__file__).parent / "fixtures"

# Under pytest-xdist (`make test` runs two workers), each worker gets its share of the cores for in-process torch:
# two workers with two threads each on a 2-core machine oversubscribe it and run several times slower.
# The command lines the tests start inherit OMP_NUM_THREADS=1 likewise (OpenMP spins when oversubscribed).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
BACKEND_MARKERS = ("openvino", "tensorrt")


def _unmet(item: pytest.Item) -> str | None:
    from deploy_nas.export.backends import backend_class

    for marker in BACKEND_MARKERS:
        if item.get_closest_marker(marker):
            reason = backend_class(marker).unavailable_reason()
            if reason:
                return f"{marker}: {reason}"
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False"
    return None


def pytest_testnodedown(node, error) -> None:
    """pytest-xdist, on the controller: merge a worker's fuzz tally so the summary counts every case."""
    tally = getattr(node, "workeroutput", {}).get("fuzz_tally")
    if tally:
        from tests.fuzz.conftest import merge_tally

        merge_tally(tally)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    from tests.fuzz.conftest import summary_line

    line = summary_line()
    if line:
        terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _unmet(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
OFFICIAL = FIXTURES / "official"

# Narrowed S and B spaces: the official choices of depth, heads and MLP ratio, widths / 8, 32 px input.
NARROW = dict(img_size=32, patch_size=8, num_classes=10, max_relative_position=2)


def narrow_space(name: str) -> AutoFormerSpace:
    return SPACES.get(name).narrowed(8, **NARROW)


@torch.no_grad()
def make_supernet(space: AutoFormerSpace, seed: int = 0, reference_relpos: bool = True, **flags) -> AutoFormerSupernet:
    """A random-initialised supernet in the official layout; weights ~N(0, s) with s chosen so activations stay O(1)."""
    model = AutoFormerSupernet(AutoFormerArch.from_space(space, **flags), reference_relpos=reference_relpos)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        fan_in = p.shape[-1] if p.dim() > 1 else 1
        if p.dim() == 4:
            fan_in = p[0].numel()
        if "layer_norm" in name or name.startswith("norm."):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=g))
        elif "embeddings_table" in name:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


def seeded_configs(space: AutoFormerSpace, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [space.sample(rng, "min"), space.sample(rng, "max")] + [space.sample(rng) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_space() -> AutoFormerSpace:
    return SPACES.get("autoformer-tiny")


@pytest.fixture(scope="session")
def tiny_supernet(tiny_space) -> AutoFormerSupernet:
    return make_supernet(tiny_space)


@pytest.fixture(scope="session")
def tiny_supernet_dir(tmp_path_factory, tiny_space) -> Path:
    """A supernet directory (`--supernet DIR`) of the tests' 32 px `autoformer-tiny` space, random weights: the
    command-line search tests run on it, a fraction of the embedded default's cost per evaluated subnet."""
    from deploy_nas.supernets import save_supernet

    return save_supernet(make_supernet(tiny_space, seed=6), tmp_path_factory.mktemp("tiny") / "sn", tiny_space)


def assert_data_parallel_match(ddp: dict, single: dict, skip: dict | None = None) -> None:
    """Weights after data-parallel steps against one process on the global batch (the all-reduce sums in another
    order): equal to rounding, except that AdamW divides by sqrt(v), so an element whose gradient sums to about 0
    turns that rounding difference into a visible step; a few elements per thousand may then differ by more than
    rounding, none by more than 1e-4. The differing elements depend on the CPU's kernels (seen on an AVX2-only host,
    not on an AVX-512 one). `skip`: per key, a function that drops the elements with an exactly zero gradient."""
    for k in single:
        a, b = ddp[k], single[k]
        if skip and k in skip:
            a, b = skip[k](a), skip[k](b)
        off = (a - b).abs() > 1e-6 + 1e-4 * b.abs()
        worst = float((a - b).abs().max()) if a.numel() else 0.0
        assert float(off.float().mean()) <= 1e-3 and worst <= 1e-4, \
            f"2 ranks != 1 process at {k}: {int(off.sum())} of {off.numel()} off, max {worst:.2e}"
