"""The suite's fixtures; the helpers they use live in ``helpers/``."""

from __future__ import annotations

import os

import pytest
import torch
from helpers.training import SmallNet

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    For modules of many small tensor operations, or float64 convolutions on small batches: on a busy machine a
    second thread costs more waiting than it gives.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_net():
    """Factory for ``SmallNet`` instances."""
    return SmallNet
