"""NASViT's fuzz strategies: configs (canonical and official `sample_active_subnet` dicts, near-valid, hostile
values and list lengths) and the tiny space's supernet in the official key layout (BN tracking buffers included)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from tests.fuzz.strategies import DOCUMENTS, FamilyStrategies, drop_and_add, maybe, near_valid

VALUES = st.one_of(st.sampled_from([8, 16, 24, 32, 40, 48, 56, 64, 96, 1, 2, 3, 5, 7, 0, -8, 12, 4096, 10 ** 9]),
                   st.floats(allow_nan=True), st.booleans(), st.text(max_size=3))


def _genes(n: int) -> st.SearchStrategy:
    return maybe(st.lists(maybe(VALUES), min_size=max(0, n - 2), max_size=n + 2))


def _configs() -> st.SearchStrategy:
    canonical = st.fixed_dictionaries({
        "family": maybe(st.just("nasvit"), st.sampled_from(["autoformer", "", "NASVIT"])),
        "resolution": maybe(st.sampled_from([32, 40, 48, 16, 64, 0, -32, 4096, 10 ** 12, 33])),
        "width": _genes(9), "depth": _genes(7), "kernel_size": _genes(7), "expand_ratio": _genes(7)})
    official = canonical.map(lambda d: {**{k: v for k, v in d.items() if k != "family"}, "flops": 1.5})
    return st.one_of(near_valid("nasvit-tiny", lambda c: c.to_official()), near_valid("nasvit-tiny"),
                     canonical.flatmap(drop_and_add), official.flatmap(drop_and_add), DOCUMENTS)


def _base() -> dict[str, torch.Tensor]:
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES

    model = FAMILIES.get("nasvit").build_supernet(SPACES.get("nasvit-tiny"), 0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STRATEGIES = FamilyStrategies(_configs(), _base)
