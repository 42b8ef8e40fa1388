"""``density.layout_of`` keeps a program's layout for the inputs it was read from only: rows of another
width, or global values of other shapes, read the program again (issue #35)."""

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.nn import data_plate
from pyro_vae.program.density import layout_of, log_joint


class WidthLatent(torch.nn.Module):
    """z has as many coordinates as a row of x (and one more per coordinate of a global ``shift``)."""

    def forward(self, x, idx=None, num_data=None):
        shift = pyro.sample("shift", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
        with data_plate(x, idx, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), x.shape[-1] + len(shift) - 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[:, : x.shape[-1]], 1.0).to_event(1), obs=x)


def test_a_layout_follows_the_width_of_the_rows_and_the_shapes_of_the_fixed_values():
    model = WidthLatent()
    assert layout_of(model, torch.randn(4, 3)).dim == 3
    assert layout_of(model, torch.randn(4, 5)).dim == 5  # a stale layout would say 3
    assert layout_of(model, torch.randn(4, 3), {"shift": torch.zeros(3)}).dim == 5
    x = torch.randn(4, 5)
    assert log_joint(model, x, torch.zeros(4, 5), {"shift": torch.zeros(1)}).shape == (4,)


def test_a_layout_is_read_once_for_the_same_inputs():
    """The samplers ask for it at every gradient: the program runs once per kind of input."""
    calls = []

    class Counting(WidthLatent):
        def forward(self, x, idx=None, num_data=None):
            calls.append(len(x))
            return super().forward(x, idx, num_data)

    model = Counting()
    for rows in (torch.randn(4, 3), torch.randn(7, 3), torch.randn(4, 3)):
        layout_of(model, rows)
    assert calls == [2]
