"""A point in training written as `500it`, `2ep` or `1ep50it` (OpenLTH's notation).

Steps are kept as text in specs (so a spec does not depend on the data set size) and resolved to an
iteration count against the number of iterations per epoch when training starts.
"""

from __future__ import annotations

import re

from .errors import UserError

_STEP = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*it)?\s*$")
FORMS = "'<N>it', '<N>ep' or '<N>ep<M>it' (e.g. 500it, 2ep, 1ep50it)"
MAX_ITERATIONS = 10**9   # no step (and no training) is longer: checked on the text here, in iterations once resolved


def parse(text: str) -> tuple[int, int]:
    """`'1ep50it'` -> `(1, 50)`; anything else raises UserError."""
    m = _STEP.match(str(text))
    if not m or (m.group(1) is None and m.group(2) is None):
        raise UserError(f"bad step {text!r}; expected {FORMS}")
    return int(m.group(1) or 0), int(m.group(2) or 0)


def resolve(text: str, iterations_per_epoch: int) -> int:
    """The iteration count a step names, e.g. `resolve('2ep', 40) == 80`."""
    epochs, iterations = parse(text)
    return epochs * iterations_per_epoch + iterations


def check(text: str) -> str:
    """`text` without spaces, if it is a step whose numbers are at most MAX_ITERATIONS (else UserError)."""
    if len(str(text)) > 64:
        raise UserError(f"bad step {str(text)[:20]}... ({len(str(text))} characters); expected {FORMS}")
    epochs, iterations = parse(text)
    if max(epochs, iterations) > MAX_ITERATIONS:
        raise UserError(f"step {text!r} is too long: at most {MAX_ITERATIONS} (10**9) epochs or iterations")
    return str(text).replace(" ", "")


def format_step(iteration: int, iterations_per_epoch: int | None = None) -> str:
    """Inverse of resolve: `format_step(90, 40) == '2ep10it'`; with no epoch size, `'90it'`."""
    if not iterations_per_epoch:
        return f"{iteration}it"
    ep, it = divmod(iteration, iterations_per_epoch)
    return (f"{ep}ep" if ep else "") + (f"{it}it" if it or not ep else "")
