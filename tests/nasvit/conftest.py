"""One torch thread for the NASViT tests: their models are small (many tiny ops), and on the shared 2-core machine
a second thread waiting on a busy core made a forward pass 10x slower (28 ms vs 370 ms measured under load)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
