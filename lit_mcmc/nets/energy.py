"""Energy parameterisation: a scalar energy from a vector-valued network, and ε̂ = ∇ₓE by autograd."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

EnergyForm = Literal["sqdist", "half_norm"]


class EnergyNet(nn.Module):
    """Wraps a network f(x, t) (output shaped like x) into a scalar energy E(x, t) per sample.

    ``form="sqdist"``: E = ‖f(x,t) − x‖² (both papers' 2D and CIFAR models; no ½). ``form="half_norm"``:
    E = ½‖f(x,t)‖² (R3's later PyTorch UNet). Calling the module returns ε̂ = ∇ₓE, so it trains with the same
    DDPM ε-loss as a score network; the graph is kept for the double backward only in training mode.
    The log-density at level t is −E/σ_t (see :class:`lit_mcmc.targets.EnergyModelTarget`).
    """

    def __init__(self, net: nn.Module, form: EnergyForm = "sqdist") -> None:
        super().__init__()
        if form not in ("sqdist", "half_norm"):
            raise ValueError(f"energy form={form!r} is not one of ['sqdist', 'half_norm']")
        self.net = net
        self.form = form

    def energy(self, x: Tensor, t: Tensor) -> Tensor:
        """E(x, t), shape [B]."""
        f = self.net(x, t)
        if self.form == "sqdist":
            return (f - x).pow(2).flatten(1).sum(1)
        return 0.5 * f.pow(2).flatten(1).sum(1)

    def energy_and_grad(self, x: Tensor, t: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(E [B], ∇ₓE shaped like x); works inside ``torch.no_grad()`` callers."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            energy = self.energy(x_in, t)
            (grad,) = torch.autograd.grad(energy.sum(), x_in, create_graph=create_graph)
        if not create_graph:
            energy, grad = energy.detach(), grad.detach()
        return energy, grad

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """ε̂(x, t) = ∇ₓE(x, t)."""
        return self.energy_and_grad(x, t, create_graph=self.training and torch.is_grad_enabled())[1]
