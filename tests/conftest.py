import pytest
import torch

from helpers import TinyNet, blobs
from incop.workload.data import Batches


@pytest.fixture(autouse=True)
def _work_in_a_temporary_folder(tmp_path, monkeypatch):
    """Anything a test writes to a relative path (a default runs/ folder) lands in its own
    temporary folder, never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_data():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    return Batches(x, y, 32, shuffle=True, seed=0), Batches(xv, yv, 128)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyNet()
