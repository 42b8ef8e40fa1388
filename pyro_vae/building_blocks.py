"""Small pieces shared by models and guides: MLPs and the data plate."""

import pyro
import torch
from torch import nn


def mlp(sizes, activation=nn.Softplus):
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    ``activation`` follows every layer but the last, whose output is left
    unconstrained (logits, locations, log-scales).
    """
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def data_plate(x, idx=None, num_data=None):
    """The plate over data points, ``pyro.plate("data", N, subsample=idx)``.

    ``x`` holds the rows ``idx`` of a dataset of ``num_data`` points, so every
    log-density inside the plate is scaled by ``num_data / len(idx)`` and the
    ELBO is an unbiased estimate on the full-data scale. With ``idx`` omitted,
    ``x`` is the whole dataset. Guides open the same plate with the same
    ``idx``, so per-datapoint (local) parameters line up with the model.
    """
    if idx is None:
        if num_data is not None and num_data != len(x):
            raise ValueError("a minibatch of a larger dataset needs its subsample indices idx")
        idx = torch.arange(len(x), device=x.device)
        num_data = len(x)
    elif num_data is None:
        raise ValueError("idx given without num_data, the size of the full dataset")
    return pyro.plate("data", num_data, subsample=idx)
