"""Helpers of the tests that kill a training mid-way and resume it: a copy of a model's state, and a callback
that stops the loop at a given step (as a kill would, without a checkpoint of that step)."""

from ticketlab.train import OnStep


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Stop(Exception):
    pass


def kill_at(step):
    def kill(s, model):
        if s == step:
            raise Stop
    return OnStep(kill)
