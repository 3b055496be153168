"""S3's fuzz strategies: configs (canonical and official YAML forms of the base network, near-valid and hostile) and
a small official-layout checkpoint (an SSSTransformer state dict with its index and mask buffers, 32 px)."""
from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st

from deploy_nas.spaces.s3 import S3Config
from tests.fuzz.strategies import DOCUMENTS, SCALARS, FamilyStrategies, drop_and_add, maybe

# An official-style network (head dim 32, heads x 32 = width) on 32 px with 2 x 2 patches: maps 16, 8, 4, 2; the
# first two stages shift (their attn_mask buffers give the input size back).
BASE = S3Config(depths=(2, 2, 2, 1), embed_dim=(32, 64, 64, 64), mlp_ratio=((2.0,) * 2, (2.0,) * 2, (2.0,) * 2, (2.0,)),
                num_heads=((1,) * 2, (2,) * 2, (2,) * 2, (2,)), qkv_dim=((32,) * 2, (64,) * 2, (64,) * 2, (64,)),
                window_size=((4,) * 2, (4,) * 2, (4,) * 2, (2,)))
IMG, PATCH, CLASSES = 32, 2, 10


@st.composite
def spoiled(draw: Any, official: bool) -> dict:
    """The base network in one form, sometimes with one entry replaced, one per-block list cut short, or one stage
    dropped: the cases that must succeed and their nearest neighbours that must not."""
    d = BASE.to_official() if official else BASE.to_dict()
    key = draw(st.sampled_from(sorted(d)))
    action = draw(st.sampled_from(["none", "none", "value", "short", "stage", "window"]))
    if action == "value" and isinstance(d[key], list) and d[key]:
        s = draw(st.integers(0, len(d[key]) - 1))
        row = d[key][s]
        if isinstance(row, list) and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(st.one_of(SCALARS, st.sampled_from([0, 3, 5, 33, 96])))
        else:
            d[key][s] = draw(st.one_of(SCALARS, st.sampled_from([0, 1, 3, 10 ** 9])))
    elif action == "short" and isinstance(d[key], list) and d[key] and isinstance(d[key][0], list):
        d[key][0] = d[key][0][:-1]
    elif action == "stage" and isinstance(d[key], list) and d[key]:
        d[key] = d[key][:-1]
    elif action == "window":
        name = "WINDOW_SIZE" if official else "window_size"
        d[name][0] = [draw(st.sampled_from([3, 5, 16, 64, 1000]))] * len(d[name][0])
    return d


def _configs() -> st.SearchStrategy:
    ints = st.one_of(st.integers(0, 5), st.sampled_from([32, 64, 96, 10 ** 12]))
    hostile = st.fixed_dictionaries({
        "DEPTHS": maybe(st.lists(maybe(ints), max_size=5)), "EMBED_DIM": maybe(st.lists(maybe(ints), max_size=5)),
        "NUM_HEADS": maybe(st.lists(maybe(st.lists(ints, max_size=4)), max_size=5)),
        "WINDOW_SIZE": maybe(st.lists(maybe(st.lists(ints, max_size=4)), max_size=5)),
        "MLP_RATIO": maybe(st.lists(maybe(st.lists(st.floats(allow_nan=True), max_size=4)), max_size=5))})
    return st.one_of(spoiled(True), spoiled(False), hostile.flatmap(drop_and_add), DOCUMENTS)


def _base() -> dict[str, torch.Tensor]:
    from deploy_nas.family import FAMILIES
    from deploy_nas.materialize import materialize
    from deploy_nas.spaces.s3 import point_space
    from deploy_nas.supernets.s3 import official_state_dict

    space = point_space(BASE, "fuzz", IMG, PATCH, num_classes=CLASSES)
    supernet = FAMILIES.get("s3").build_supernet(space, 0)
    return official_state_dict(materialize(supernet, BASE))


STRATEGIES = FamilyStrategies(_configs(), _base)
