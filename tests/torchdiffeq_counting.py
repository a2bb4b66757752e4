"""A torchdiffeq func wrapper that counts, for comparing step sequences with torchdiffeq's."""

import torch


class Counting(torch.nn.Module):
    """Counts torchdiffeq's evaluations and (through its step callbacks) accepted/rejected steps."""

    def __init__(self, f) -> None:
        super().__init__()
        self.f = f
        self.nfe = self.accepted = self.rejected = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.f(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1
