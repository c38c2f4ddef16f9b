"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: tracing and reference runs are several times faster on a busy
    2-core machine than with two threads fighting over it. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``. torch is imported
    here, not at the top: tests/test_torch_free.py runs in a venv without it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
