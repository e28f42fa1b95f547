"""ticketlab: find, train and understand sparse subnetworks (lottery tickets).

    import ticketlab
    results = ticketlab.lottery(levels=3, seeds=(0, 1))     # or ticketlab.lottery(spec)
    results.summary()
"""

from __future__ import annotations

__version__ = "0.1.0"


def lottery(spec=None, *, out: str = "runs", force: bool = False, progress: bool | None = False, **settings):
    """Run or resume a lottery experiment. `spec` is a LotterySpec, or give settings by name
    (`model="lenet_300_100", levels=5, seeds=(0, 1)`). Returns a `Results` table."""
    from . import spec as specs
    from .experiments.lottery import LotterySpec, run

    spec = specs.replace(spec or LotterySpec(), **settings) if settings else (spec or specs.build(LotterySpec, {}))
    return run(spec, out=out, force=force, progress=progress)


__all__ = ["lottery", "__version__"]
