"""PSViT's fuzz strategies: configs in the canonical (cells per stage) and layer-string forms, near-valid ones with
one value spoiled, hostile structures (wrong lengths, unknown choices, orphan or stage-crossing R, no layer left,
widths that fall), and a tiny supernet state dict in the family's layout."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from tests.fuzz.strategies import DOCUMENTS, SCALARS, FamilyStrategies, drop_and_add, maybe, near_valid

CHOICE = maybe(st.sampled_from(["layer", "shared", "identity"]), st.sampled_from(["Layer", "skip", "", "shared "]))
WIDTH = maybe(st.sampled_from([16, 24, 32, 40, 48, 64, 8, 0, 4096, 17]))
TOKENS = maybe(st.sampled_from([64, 32, 16, 8, 4, 9, 0, 63, 10 ** 9]))
LAYERS = st.one_of(st.text(alphabet="AR-| ", max_size=24), st.sampled_from(["A AR | R A | AR -", "A A | A A | A A",
                                                                           "- - | - - | - -", "AR AR AR | | A"]))


def _configs() -> st.SearchStrategy:
    stages = st.integers(0, 4)
    canonical = stages.flatmap(lambda n: st.fixed_dictionaries({
        "family": maybe(st.just("psvit"), st.sampled_from(["autoformer", "PSViT", ""])),
        "widths": maybe(st.lists(WIDTH, min_size=n, max_size=n)),
        "tokens": maybe(st.lists(TOKENS, min_size=n, max_size=n)),
        "cells": maybe(st.lists(maybe(st.lists(CHOICE, max_size=3), SCALARS), min_size=n, max_size=n))}))
    layer_form = st.fixed_dictionaries({"family": st.just("psvit"), "widths": st.lists(WIDTH, max_size=4),
                                        "tokens": st.lists(TOKENS, max_size=4), "layers": maybe(LAYERS)})
    return st.one_of(near_valid("psvit-tiny-1d"), near_valid("psvit-tiny-1d"), canonical.flatmap(drop_and_add),
                     layer_form.flatmap(drop_and_add), DOCUMENTS)


def _base() -> dict[str, torch.Tensor]:
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES

    model = FAMILIES.get("psvit").build_supernet(SPACES.get("psvit-tiny-1d"), 0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STRATEGIES = FamilyStrategies(_configs(), _base)
