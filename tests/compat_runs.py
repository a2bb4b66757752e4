"""One training step through torchdiffeq's interface, for comparing odeplug.compat with
torchdiffeq itself on the same problem."""

import torch


def run(library, function, field, y0, ts, **kwargs):
    """Solve with ``library.<function>``; return the outputs and dL/dy0, dL/dθ, dL/dt."""
    y0 = tuple(p.clone().requires_grad_() for p in y0) if isinstance(y0, tuple) else y0.clone().requires_grad_()
    ts = ts.clone().requires_grad_()
    field.zero_grad()
    ys = getattr(library, function)(field, y0, ts, **kwargs)
    parts = ys if isinstance(ys, tuple) else (ys,)
    loss = sum((p**2).sum() + p.sum() for p in parts)
    loss.backward()
    grads_y0 = tuple(p.grad for p in y0) if isinstance(y0, tuple) else (y0.grad,)
    return {
        "ys": torch.cat([p.detach().reshape(-1) for p in parts]),
        "dy0": torch.cat([g.reshape(-1) for g in grads_y0]),
        "dtheta": torch.cat([p.grad.reshape(-1) for p in field.parameters()]),
        "dt": ts.grad,
    }
