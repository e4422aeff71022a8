"""Assertions shared by tests: bit-for-bit equality of models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def assert_bit_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same tensor names, and per name the same dtype, shape and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    import torch

    assert got.keys() == expected.keys()
    for name in got:
        a, b = got[name], expected[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        # the bytes, not the values: == would call two NaNs different and -0.0 equal to 0.0
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), f"tensor {name} differs"
