"""ticketlab: find, train and understand sparse subnetworks (lottery tickets).

    import ticketlab
    results = ticketlab.lottery(levels=3, seeds=(0, 1))     # or ticketlab.lottery(spec)
    results.summary()

Every experiment of the command line has a function of the same name here (`lottery`, `deconstruct`,
`supermask`, `lca`, `stability`, `earlybird`, `forget`): give it a spec, or settings by name, and get the tidy
results table back; files go to `out` as with the command.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _run(experiment: str, spec, out: str, force: bool, progress: bool | None, settings: dict, wait: bool = False):
    from . import spec as specs
    from .cli import EXPERIMENTS

    e = EXPERIMENTS[experiment]
    base = spec if spec is not None else specs.build(e.spec_class(), {})
    spec = specs.replace(base, **settings) if settings else base  # validated before torch is imported
    return e.run_module().run(spec, out=out, force=force, progress=progress, wait=wait)


def _api(experiment: str):
    def run(spec=None, *, out: str = "runs", force: bool = False, progress: bool | None = False, wait: bool = False,
            **settings):
        return _run(experiment, spec, out, force, progress, settings, wait)

    run.__name__ = experiment
    run.__doc__ = (f"Run or resume the `{experiment}` experiment (as `ticketlab {experiment}`). `spec` is its spec "
                   "object, or give settings by name; returns a `Results` table. `wait`: if another command is "
                   "writing the run folder, wait for it (else UserError at once).")
    return run


lottery = _api("lottery")
deconstruct = _api("deconstruct")
supermask = _api("supermask")
lca = _api("lca")
stability = _api("stability")
earlybird = _api("earlybird")
forget = _api("forget")
prune_at_init = _api("prune-at-init")
prune_at_init.__name__ = "prune_at_init"


def load_ticket(path, sparse: bool = False):
    """A ticket written by `ticketlab export` (safetensors) as a ready `nn.Module` in eval mode: dense weights, or
    `torch.sparse` CSR weights for the pruned layers with `sparse=True`. `ticket(x)` takes inputs normalised as
    the run's data set normalises them; `ticket.normalize(raw)` applies that normalisation to raw inputs
    (`ticket.predict(raw)` does both); `ticket.info` is the file's metadata. Raises `ticketlab.io.CorruptFile`
    when the file is not an intact ticket. See `ticketlab.export` for the file format."""
    from .export import load_ticket as _load

    return _load(path, sparse=sparse)


__all__ = ["lottery", "deconstruct", "supermask", "lca", "stability", "earlybird", "forget", "prune_at_init", "load_ticket", "__version__"]
