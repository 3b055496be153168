"""The psvit tests run their tiny models on one torch thread, in process and in the console scripts they start
(OMP_NUM_THREADS is read when torch starts): for models this small a second thread buys nothing, and on a machine
whose cores are shared it costs up to 8x (measured: 32 SPOS steps of psvit-tiny-2d, 3.6 s on one thread, 30 s on
two)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(before)
