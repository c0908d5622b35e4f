"""``torch.compile`` of the networks inside the framework's modules (``compile: true`` in configs).

Networks are compiled in place (``nn.Module.compile``), so every Target that already holds one calls the compiled
forward, and checkpoints keep their parameter names. Shapes are fixed (``dynamic=False``): a sampling batch keeps
its shape through a run, and a last, smaller batch compiles once more.
"""

from __future__ import annotations

import warnings

from torch import nn

from lit_mcmc.nets.energy import EnergyNet


def inner_network(module: nn.Module) -> nn.Module:
    """The plain network behind a module: ``.net`` of the framework's LightningModules (the network inside an
    energy wrapper), else the module itself (published ADM / diffusers networks)."""
    net = getattr(module, "net", module)
    return net.net if isinstance(net, EnergyNet) else net


def compile_network(module: nn.Module, training_energy: bool = False) -> None:
    """Compile ``module``'s network in place. Training an energy model needs a double backward, which
    ``torch.compile`` does not support: it then stays eager, with a warning."""
    if training_energy:
        warnings.warn("compile: true is ignored for training an energy model: its loss needs a double backward "
                      "(ε̂ = ∇ₓE), which torch.compile does not support; the network runs eagerly", stacklevel=2)
        return
    inner_network(module).compile(dynamic=False)
