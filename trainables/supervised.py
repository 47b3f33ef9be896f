"""A supervised training loop with exact checkpoint/resume, for any family's classifier.

Adam or plain SGD (the optimiser whose dynamics NINR's theory describes) + a loss (cross-entropy
by default) on tensors that stay on the device, an optional cosine
schedule annealed per step over the whole run, and a callback after every epoch that can save a
checkpoint: passing Progress.state() back as `state` resumes to the same final weights as an
uninterrupted run (bit-identical per seed on CPU for a fixed thread count; on CUDA only with
torch.backends.cudnn.deterministic = True, left to the caller since it costs speed).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checks import check_choice
from trainables.common import STATUS_DIVERGED, STATUS_OK, Progress, TrainResult
from trainables.injection import stream_seed
from trainables.noise import make_generator

SCHEDULERS = ("cosine", "none")
OPTIMIZERS = ("adam", "sgd")


def train_supervised(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int, lr: float,
                     batch_size: int, epochs: int, steps: int = 0, scheduler: str = "cosine",
                     generators: dict[str, torch.Generator] | None = None,
                     loss_fn: Callable | None = None,
                     batch_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     callback: Callable[[Progress], object] | None = None,
                     state: dict | None = None, optimizer: str = "adam", weight_decay: float = 0.0,
                     momentum: float = 0.0, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train `model` (already on x's device) on (x, y); `steps` > 0 replaces `epochs`.

    `batch_loss(model, xb, yb)` replaces `loss_fn(model(xb), yb)` where a step needs more than a
    forward pass (augmentation, noise drawn from the labels, several draws per example).
    The last incomplete batch of an epoch is dropped (no size-1 batches for BatchNorm).
    `generators` (e.g. a noise hook's) are saved in checkpoints and restored with the rest.
    Returning True from `callback` stops early. A non-finite loss ends training with status
    "diverged" (the model keeps its last finite weights) instead of raising. `on_step(step, loss)`
    runs after every optimiser step (per-step measurements such as a weight-norm trajectory; what
    it records must go into the checkpoint through the callback to survive a resume).
    `weight_decay` is the optimiser's L2 penalty; `momentum` is SGD's.
    """
    check_choice("scheduler", scheduler, SCHEDULERS)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    loss_fn = loss_fn or F.cross_entropy  # looked up per call, so a patched F.cross_entropy is seen
    start = time.perf_counter()
    device = x.device
    generators = dict(generators or {})
    shuffle_gen = make_generator(stream_seed(seed, "shuffle"), "cpu")  # same order on every device
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    bs = min(batch_size, len(x))
    per_epoch = len(x) // bs
    total_steps = steps or epochs * per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps) if scheduler == "cosine" else None
    epoch, step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        for name, gen in generators.items():
            gen.set_state(state[name].cpu())
        shuffle_gen.set_state(state["shuffle_rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])

    def state_fn() -> dict:  # deep copy: the live tensors keep changing after the callback
        snap = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else {},
                "epoch": epoch, "step": step, "history": list(history),
                "shuffle_rng": shuffle_gen.get_state(), "torch_rng": torch.get_rng_state()}
        snap |= {name: gen.get_state() for name, gen in generators.items()}
        if device.type == "cuda":
            snap["cuda_rng"] = torch.cuda.get_rng_state(device)
        return copy.deepcopy(snap)

    model.train()
    while step < total_steps:
        perm = torch.randperm(len(x), generator=shuffle_gen).to(device)
        loss_sum, count = 0.0, 0
        for i in range(min(per_epoch, total_steps - step)):
            idx = perm[i * bs:(i + 1) * bs]
            loss = batch_loss(model, x[idx], y[idx]) if batch_loss else loss_fn(model(x[idx]), y[idx])
            value = loss.item()
            if not math.isfinite(value):
                model.eval()
                return TrainResult(model, STATUS_DIVERGED, epoch, history, time.perf_counter() - start,
                                   f"non-finite loss {value} at epoch {epoch + 1}, step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step, loss_sum, count = step + 1, loss_sum + value, count + 1
            if on_step is not None:
                on_step(step, value)
        epoch += 1
        history.append(loss_sum / count)
        if callback is not None and callback(Progress(epoch, history[-1], state_fn, step / total_steps)) is True:
            break
    model.eval()
    return TrainResult(model, STATUS_OK, epoch, history, time.perf_counter() - start)
