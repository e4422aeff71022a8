"""apply --device cuda: the arithmetic runs on the GPU and gives the CPU's result bit for bit.

Skipped, with the reason, where torch sees no CUDA device (the CPU-only build used here,
or a machine without a GPU). Run on a GPU machine with:
    .venv/bin/python -m pytest tests/test_device.py -q -rs
"""

from __future__ import annotations

import pytest
import torch

import deltaformat
from paramdelta_dev.assertions import assert_bit_equal
from paramdelta_dev.tiny_models import load_state, make_trio, new_model, save, train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False): "
    "apply --device cuda is tested on a GPU machine only",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("device")
    base, post, newbase = make_trio(d / "trio")
    art = d / "delta"
    deltaformat.extract(base, post, art, quiet=True)
    return d, base, post, newbase, art


def test_cuda_apply_on_a_new_base_equals_cpu_bitwise(setup, tmp_path):
    _, _, _, newbase, art = setup
    cpu = deltaformat.apply([art], newbase, tmp_path / "cpu", quiet=True, device="cpu")
    gpu = deltaformat.apply([art], newbase, tmp_path / "cuda", quiet=True, device="cuda")
    assert not cpu.verified_exact and not gpu.verified_exact
    assert_bit_equal(load_state(tmp_path / "cuda"), load_state(tmp_path / "cpu"))


def test_cuda_apply_on_the_original_base_is_the_post_model(setup, tmp_path):
    _, base, post, _, art = setup
    r = deltaformat.apply([art], base, tmp_path / "cuda", quiet=True, device="cuda")
    assert r.verified_exact  # every output tensor checked against the post model's digest
    assert_bit_equal(load_state(tmp_path / "cuda"), load_state(post))


def test_cuda_alpha_mixing_equals_cpu_bitwise(setup, tmp_path):
    _, base, _, newbase, art = setup
    other = save(train(new_model(0), seed=7), tmp_path / "post2")
    art2 = tmp_path / "delta2"
    deltaformat.extract(base, other, art2, quiet=True)
    for device in ("cpu", "cuda"):
        deltaformat.apply([art, art2], newbase, tmp_path / device, alphas=[0.5, 1.25], quiet=True, device=device)
    assert_bit_equal(load_state(tmp_path / "cuda"), load_state(tmp_path / "cpu"))
