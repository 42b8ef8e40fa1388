"""Studies across inference methods, on one model.

- ``posterior_comparison``: the encoder, semi-amortized refinement, per-point q* and NUTS under one
  decoder, and the gaps of Cremer, Li & Duvenaud (2018);
- ``family_gaps``: those gaps per variational family;
- ``discrete_comparison``: the same for a model whose latents are all discrete;
- ``scratch``, ``mixture_learners``: learning the decoder from scratch with each method.
"""
