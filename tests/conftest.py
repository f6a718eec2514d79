"""Shared test setup: this folder is on ``sys.path`` so test files can import its support modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread and one BLAS thread for a module (``pytestmark = usefixtures("one_thread")``).

    The suite runs on two shared cores, where extra threads mostly wait: OpenMP barriers (grid_sample's backward,
    tiny convolutions) and spinning OpenBLAS threads (ridge) were seen to make work 10-100x slower.
    """
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, so the limit reaches it too)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)
