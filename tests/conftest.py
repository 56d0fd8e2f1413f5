import pytest
import torch

import repnext


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ALL_MODELS = repnext.list_models()
