"""Shared fixtures. Helpers (tiny models and data, launchers, checkpoint pieces) are in `helpers`."""

from __future__ import annotations

import pytest
from helpers.tiny import tiny_classification_data
from torch.utils.data import DataLoader


@pytest.fixture
def tiny_loaders() -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(tiny_classification_data(64), batch_size=8, shuffle=True),
        DataLoader(tiny_classification_data(30, seed=1), batch_size=8),
    )
