"""Non-finite safety for every training module: rewards that are NaN/inf are masked, steps whose loss or
gradient norm is NaN/inf are skipped, both are counted and logged, and a run that keeps producing them
stops with a clear error instead of training (and saving) a NaN policy.

* :func:`mask_nonfinite_rewards` — a candidate whose reward is NaN/inf is treated as invalid (it gets the
  invalid-candidate reward); a NaN/inf ground-truth reward becomes NaN, which the diagnostics read as
  "no reward signal" (thresholds on it do not pass).
* :class:`FiniteGuard` — per-module counters and the consecutive-skip limit; its state travels in
  checkpoints so a resumed run keeps counting.
* :func:`guarded_manual_step` — backward, clipping and the optimizer step of a manual-optimisation module
  (GRPO), skipped when the loss or the gradient norm is not finite.
* Automatic optimisation (SFT, reward model) uses :meth:`FiniteGuard.loss_ok` in ``training_step`` (returning
  ``None`` skips Lightning's backward) and :meth:`FiniteGuard.drop_nonfinite_grads` in
  ``on_before_optimizer_step``: gradients set to ``None`` make ``optimizer.step()`` leave every parameter and
  its optimizer state untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: logged metric names
MASKED_REWARDS = "nonfinite/masked_rewards"
SKIPPED_STEPS = "nonfinite/skipped_steps"


class NonFiniteTraining(RuntimeError):
    """Training produced NaN/inf losses or gradients for too many consecutive steps (or a model with NaN/inf
    parameters was about to be saved)."""


def mask_nonfinite_rewards(raw: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Reward-model scores ``raw [B, G]`` with NaN/inf entries set to 0 and removed from ``valid [B, G]``.

    Returns ``(raw, valid, masked)``: ``masked`` counts the valid candidates whose reward was not finite (the
    caller gives them the invalid-candidate reward)."""
    finite = torch.isfinite(raw)  # [B, G]
    masked = int((valid & ~finite).sum())
    return torch.where(finite, raw, torch.zeros_like(raw)), valid & finite, masked


def nan_if_nonfinite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with ±inf replaced by NaN (the diagnostics treat NaN as a missing value)."""
    return torch.where(torch.isfinite(x), x, torch.full_like(x, math.nan))


def grad_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor:
    """The total L2 norm of the gradients (0 when none has a gradient); NaN/inf if any gradient is."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2: every rank sees the same total
    return (full() if full is not None else norm).float()


def nonfinite_parameters(module: nn.Module) -> list[str]:
    """Names of the parameters (and floating buffers) holding NaN/inf values."""
    def local(t: torch.Tensor) -> torch.Tensor:  # a DTensor shard under FSDP2: this rank's part
        to_local = getattr(t, "to_local", None)
        return to_local() if to_local is not None else t

    bad = [n for n, p in module.named_parameters() if not bool(torch.isfinite(local(p.detach())).all())]
    bad += [n for n, b in module.named_buffers()
            if b.is_floating_point() and not bool(torch.isfinite(local(b)).all())]
    return bad


class FiniteGuard:
    """Counts masked rewards and skipped steps and stops a run after ``max_consecutive`` skipped steps in a row.

    Args:
        max_consecutive: skipped steps in a row after which :meth:`skip` raises :class:`NonFiniteTraining`.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.masked_rewards = 0
        self.skipped_steps = 0
        self.consecutive = 0

    def count_masked(self, n: int) -> None:
        self.masked_rewards += int(n)

    def ok(self) -> None:
        """A step was taken."""
        self.consecutive = 0

    def skip(self, why: str, step: int) -> None:
        """A step was skipped; raises once ``max_consecutive`` steps in a row were."""
        self.skipped_steps += 1
        self.consecutive += 1
        log.warning("step %d skipped: %s (%d in a row, %d in all)", step, why, self.consecutive, self.skipped_steps)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTraining(
                f"{self.consecutive} consecutive training steps (up to global step {step}) had a non-finite loss or "
                f"gradient norm (last: {why}); stopping instead of training on NaN/inf. {self.masked_rewards} "
                "non-finite rewards were masked so far. Check the learning rate, the data and the reward model.")

    def loss_ok(self, loss: torch.Tensor, step: int) -> bool:
        """False (and the step counted as skipped) if ``loss`` is NaN/inf."""
        if bool(torch.isfinite(loss.detach()).all()):
            return True
        self.skip(f"loss is {float(loss.detach().float().sum())}", step)
        return False

    def drop_nonfinite_grads(self, module: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> bool:
        """Before an automatic-optimisation step: if the gradient norm is NaN/inf, set every gradient to ``None``
        (so the step changes no parameter and no optimizer state) and count the step as skipped."""
        if not any(p.grad is not None for p in module.parameters()):
            return True  # no backward ran (training_step returned None after a non-finite loss): nothing to drop
        norm = grad_norm(module.parameters())
        if bool(torch.isfinite(norm)):
            self.ok()
            return True
        optimizer.zero_grad(set_to_none=True)
        self.skip(f"gradient norm is {float(norm)}", step)
        return False

    def log_to(self, module) -> None:  # noqa: ANN001 — a LightningModule
        """Log the running totals (on the step, summed over nothing: they are already totals)."""
        b = 1
        module.log(MASKED_REWARDS, float(self.masked_rewards), on_step=True, on_epoch=False, batch_size=b)
        module.log(SKIPPED_STEPS, float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=b)

    def state_dict(self) -> dict[str, int]:
        return {"masked_rewards": self.masked_rewards, "skipped_steps": self.skipped_steps,
                "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.masked_rewards = int(state.get("masked_rewards", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive = int(state.get("consecutive", 0))


def guarded_manual_step(module, optimizer, loss: torch.Tensor, grad_clip: float | None,  # noqa: ANN001
                        guard: FiniteGuard) -> bool:
    """One manual-optimisation step (zero_grad, backward, clip, step) of a LightningModule, skipped when the loss
    or the gradient norm is not finite. Returns whether the optimizer stepped (the caller steps its scheduler
    only then, so the schedule follows the optimizer's steps)."""
    step = module.global_step
    optimizer.zero_grad()
    if not guard.loss_ok(loss, step):
        return False
    module.manual_backward(loss)
    norm = grad_norm(module.parameters())
    if not bool(torch.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        guard.skip(f"gradient norm is {float(norm)}", step)
        return False
    if grad_clip:
        module.clip_gradients(optimizer, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
    optimizer.step()
    guard.ok()
    return True


class FiniteSteps:
    """Mixin for a LightningModule with automatic optimisation: NaN/inf gradients are dropped before the optimizer
    step (the step is then a no-op for every parameter and its optimizer state) and counted; ``max_skipped_steps``
    in a row stop the fit with :class:`NonFiniteTraining`. Manual-optimisation modules call
    :func:`guarded_manual_step` instead. The policy modules take ``max_skipped_steps`` as a constructor argument
    (:class:`~adagrpo.lightning_modules.base.PolicyModule`); others keep this class default."""

    #: skipped steps in a row after which the fit stops (an instance value overrides it)
    max_skipped_steps: int = 10

    @property
    def finite_guard(self) -> FiniteGuard:
        guard = self.__dict__.get("_finite_guard")
        if guard is None:
            guard = FiniteGuard(self.max_skipped_steps)
            self.__dict__["_finite_guard"] = guard
        elif guard.max_consecutive != self.max_skipped_steps:  # the limit was changed after the guard was made
            guard.max_consecutive = FiniteGuard(self.max_skipped_steps).max_consecutive
        return guard

    def on_before_optimizer_step(self, optimizer) -> None:  # noqa: ANN001
        super().on_before_optimizer_step(optimizer)
        if self.automatic_optimization:
            self.finite_guard.drop_nonfinite_grads(self, optimizer, self.global_step)
            self.finite_guard.log_to(self)

    def finite_loss(self, loss: torch.Tensor) -> torch.Tensor | None:
        """``loss``, or ``None`` (Lightning then skips backward and the step) when it is NaN/inf."""
        if self.finite_guard.loss_ok(loss, self.global_step):
            return loss
        self.finite_guard.log_to(self)
        return None
