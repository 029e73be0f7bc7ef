"""Test-wide settings: nothing reaches the network, and runs stay small on 2 cores."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on shared cores, OpenMP spinning with more threads than idle cores
    makes tiny steps orders of magnitude slower. Use with `pytest.mark.usefixtures`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
