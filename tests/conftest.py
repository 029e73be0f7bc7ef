"""Test-wide settings: nothing reaches the network, runs stay small on 2 cores, and HiLo's
native kernels are built into a cache of the test session's own."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("LITV2_STORAGE", None)  # a developer's own search server must not stand in for the tests' storage
if "LITV2_CACHE_DIR" not in os.environ:
    os.environ["LITV2_CACHE_DIR"] = tempfile.mkdtemp(prefix="litv2-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LITV2_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on shared cores, OpenMP spinning with more threads than idle cores
    makes tiny steps orders of magnitude slower. Use with `pytest.mark.usefixtures`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
