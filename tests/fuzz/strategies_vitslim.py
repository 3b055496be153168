"""ViT-Slim's fuzz strategies: budget configs (canonical, near-valid, hostile values) and a tiny masked DeiT."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from tests.fuzz.strategies import DOCUMENTS, FamilyStrategies, drop_and_add, maybe, near_valid

BUDGET = st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.0, 1.0, -0.5, 1.5, float("nan"), float("inf"), 1e308]),
                   st.booleans(), st.text(max_size=4))


def _configs() -> st.SearchStrategy:
    canonical = st.fixed_dictionaries({
        "family": maybe(st.just("vitslim"), st.sampled_from(["autoformer", "", "VITSLIM"])),
        "budget_attn": BUDGET, "budget_mlp": BUDGET, "budget_patch": BUDGET,
        "soft": maybe(st.booleans())})
    return st.one_of(near_valid("vitslim-tiny"), canonical.flatmap(drop_and_add), DOCUMENTS)


def _base() -> dict[str, torch.Tensor]:
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES

    model = FAMILIES.get("vitslim").build_supernet(SPACES.get("vitslim-tiny"), 0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STRATEGIES = FamilyStrategies(_configs(), _base)
