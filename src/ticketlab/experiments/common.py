"""What every experiment does before its first step: check the spec against the data, load the data onto
the device, and know how to build the model. Everything here happens before a run folder is created,
so bad input never leaves a half-written run behind: what needs the data set (the batch size against the
training set, steps in iterations, warmup and milestones before the end) or the model's shapes (its
memory estimate against the memory available, from a model on the meta device) is checked here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import data as datasets
from .. import models, steps
from ..data.batches import BatchOrder
from ..errors import UserError
from ..run.plan import check_model_fits
from ..train import Schedule


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: unknown device {name!r}; valid: cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available to this torch ({torch.__version__}); use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device: unsupported device {name!r}; valid: cpu, cuda, cuda:N, mps")
    return device


@dataclass
class Setup:
    """The data on its device, the training length in iterations, and a model factory."""

    spec: object
    data: datasets.Dataset
    device: torch.device
    iterations_per_epoch: int
    total_steps: int
    schedule: Schedule

    @classmethod
    def prepare(cls, spec) -> "Setup":
        d, t = spec.data, spec.train
        # One thread per process unless asked: cores are used by worker processes instead (faster for
        # these models), and the numbers then do not depend on --workers (matmuls split over
        # threads round differently).
        torch.set_num_threads(t.threads or 1)
        device = resolve_device(t.device)
        data = datasets.load(d.dataset, d.data_dir, subsample=d.subsample, random_labels=d.random_labels,
                             data_seed=d.data_seed, mnist1d_seed=d.mnist1d_seed, image_size=d.image_size)
        if not d.augment:
            data = dataclasses.replace(data, augment=None)
        n = len(data.train_y)
        if t.batch_size > n:
            raise UserError(f"--batch-size {t.batch_size} is larger than the training set ({n} samples of {d.dataset}"
                            f"{' after --subsample' if d.subsample < 1 else ''}); use at most {n} ({n}: full batch)")
        ipe = BatchOrder(data, t.batch_size, 0).iterations_per_epoch
        total = steps.resolve(t.steps, ipe)
        if total <= 0:
            raise UserError(f"--steps {t.steps}: training must be at least one iteration")
        if total > steps.MAX_ITERATIONS:
            raise UserError(f"--steps {t.steps} is {total} iterations ({ipe} per epoch); at most {steps.MAX_ITERATIONS} (10**9)")
        warmup = steps.resolve(t.warmup, ipe)
        if warmup >= total:
            raise UserError(f"--warmup {t.warmup} ({warmup} iterations) is not before the end of training "
                            f"(--steps {t.steps} = {total} iterations)")
        for m in t.milestones:
            if steps.resolve(m, ipe) >= total:
                raise UserError(f"--milestones: {m} ({steps.resolve(m, ipe)} iterations) is not before the end of training "
                                f"(--steps {t.steps} = {total} iterations), so it would never apply")
        m = spec.model
        shapes_only = models.build(m.model, data.input_shape, data.num_classes, seed=0, init=m.init, widths=m.widths, meta=True)
        check_model_fits(shapes_only, t.batch_size, math.prod(data.input_shape), f"--model {m.model}"
                         + (f" --widths {','.join(map(str, m.widths))}" if m.widths else ""))
        if device.type != "cpu":
            data = dataclasses.replace(data, **{k: getattr(data, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")})
        setup = cls(spec, data, device, ipe, total, Schedule.from_spec(t, ipe))
        setup.build_model(0)  # unknown widths etc. fail here, before anything is written
        return setup

    def step(self, text: str) -> int:
        return steps.resolve(text, self.iterations_per_epoch)

    def build_model(self, seed: int) -> nn.Module:
        m = self.spec.model
        model = models.build(m.model, self.data.input_shape, self.data.num_classes, seed=seed, init=m.init,
                             widths=m.widths)
        return model.to(self.device)

    def new_model_like(self) -> nn.Module:
        """A model to load weights into (its own init is overwritten)."""
        return self.build_model(0)
