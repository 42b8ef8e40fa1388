"""The objectives SVI can follow (``--elbo``): name -> a Pyro ELBO class.

Each is a loss whose value is an estimate of -ELBO on the full-data scale
(the data plate scales a minibatch of B rows by N / B):

- ``trace``: ``Trace_ELBO``, the Monte Carlo estimate of
  E_q[log p(x, z) - log q(z | x)], reparameterised where the guide's sites
  allow, with score-function terms where they do not;
- ``meanfield``: ``TraceMeanField_ELBO``, the same bound with
  KL(q(z | x) || p(z)) analytic where it is known;
- ``enum``: ``TraceEnum_ELBO``, the same bound with the model's discrete
  sites marked ``infer={"enumerate": "parallel"}`` (or under
  ``config_enumerate``) summed out exactly instead of sampled (one plate,
  the data plate, below the enumeration dimensions).
"""

import functools

from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "enum": functools.partial(TraceEnum_ELBO, max_plate_nesting=1),
}
