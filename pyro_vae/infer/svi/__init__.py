"""Stochastic variational inference: one loop for every model, guide and objective.

- ``optim``: one torch optimizer over every parameter SVI steps;
- ``compiled``: SVI's step recorded and compiled per minibatch shape;
- ``distributed``: data-parallel SVI across processes started by ``torchrun``;
- ``train``: the SVI step and the epoch loop.
"""
