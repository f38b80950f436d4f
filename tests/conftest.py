import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    """Every test starts from a fixed global seed and uses at most 2 threads."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
