"""Shared fixtures. ``device``: every test that takes it runs once per available device — CPU always, CUDA when
``torch.cuda.is_available()`` — so on a GPU machine the same suite covers the CUDA paths; on a CPU-only machine
the CUDA cases do not exist (nothing is skipped or reported)."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
