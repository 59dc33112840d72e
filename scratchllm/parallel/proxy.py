"""What a data-parallel runner shares with the model it runs: the model's own attributes and its train/eval
switch, so that the runner stands in for its model (``generate``, ``estimate_loss``)."""

from __future__ import annotations


class StandsInForModel:
    """``self.model``'s params, cfg, context, dtype, backend, xp and training; ``train()`` / ``eval()`` switch the
    model."""

    params = property(lambda self: self.model.params)
    cfg = property(lambda self: self.model.cfg)
    context = property(lambda self: self.model.context)
    dtype = property(lambda self: self.model.dtype)
    backend = property(lambda self: self.model.backend)
    xp = property(lambda self: self.model.xp)
    training = property(lambda self: self.model.training)

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)
