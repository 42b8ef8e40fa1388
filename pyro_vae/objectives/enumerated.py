"""``--elbo enum``: Pyro's ``TraceEnum_ELBO`` with the guide's discrete sites enumerated too."""

from pyro.infer import TraceEnum_ELBO, config_enumerate


class EnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` (one plate) with the guide's discrete sites enumerated in parallel too
    (``config_enumerate``): the exact expectation over q of a guide that draws its discrete latents
    (``categorical_mlp``'s encoder), as well as the model's marked sites summed out."""

    def __init__(self):
        super().__init__(max_plate_nesting=1)

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return super().loss_and_grads(model, config_enumerate(guide, "parallel"), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)
