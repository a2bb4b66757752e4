"""The memory meter (odeplug._memory.AllocatedBytes): it counts what the allocator hands out,
and measuring does not change what autograd does."""

import torch

from odeplug._memory import AllocatedBytes


def test_counts_allocations_and_frees_exactly():
    before = torch.empty(10_000)  # allocated before the meter: not counted
    with AllocatedBytes() as meter:
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000, dtype=torch.float64)  # 4 MB
        del a
        c = torch.empty(250, 1000)  # 1 MB
        del before  # freeing older memory must not count as negative use
    assert meter.peak == 8_000_000
    assert meter.current == 5_000_000
    del b, c


class _HandBack(torch.autograd.Function):
    """A node whose backward returns a prepared tensor as a gradient contribution."""

    @staticmethod
    def forward(ctx, holder, weight):
        ctx.holder = holder
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        return None, ctx.holder.pop()


def _sums_in_place() -> bool:
    """Whether autograd adds a weight's contributions into a tensor it holds the only reference
    to (it does, unless something like a Python dispatch mode gets in the way)."""
    weight = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(3, 64)
    holder = [torch.zeros(64, 64)]
    address = holder[0].data_ptr()
    y = torch.sin(x @ weight.t()) @ weight.t()
    handed = _HandBack.apply(holder, weight)
    (grad,) = torch.autograd.grad([y, handed], [weight], [torch.ones_like(y), torch.ones(())])
    return grad.data_ptr() == address


def test_measuring_leaves_autograd_in_place_sums_alone():
    assert _sums_in_place()
    with AllocatedBytes():
        assert _sums_in_place()
