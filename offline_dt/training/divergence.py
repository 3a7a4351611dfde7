"""The divergence guard of the training loop: a non-finite loss or non-finite weights stop the
run (:class:`DivergenceError`) before anything non-finite reaches a checkpoint.

Without a host sync per update: the loop hands every update's loss (a device scalar, already
computed) to :meth:`FiniteGuard.add`, which only keeps a reference; :meth:`FiniteGuard.check`
reads them back together (one copy to the host) where the loop syncs anyway:
at every log row, before every checkpoint and evaluation, before a batch source collects, and
every :data:`FLUSH_EVERY` updates. Before a checkpoint :meth:`FiniteGuard.check_weights` also
checks the networks and the optimizer state, which a non-finite gradient (with a finite loss)
makes non-finite in the update it happens. So the checkpoint on disk is always the last finite
one, and the run stops at most ``log_every`` updates after the loss left the reals. An error
inside an update or a collect (a method's ``torch.distributions`` refusing NaN logits) is
reported as the divergence when the losses or weights are not finite (:meth:`FiniteGuard.
explain`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

#: Pending losses that make :meth:`FiniteGuard.add` check them itself (bounds the memory the
#: references hold when ``log_every`` is large).
FLUSH_EVERY = 1000


class DivergenceError(ValueError):
    """Training diverged: a loss or a weight became non-finite (NaN or infinite).

    Attributes: ``step`` the update whose loss (or whose result) was non-finite, ``loss`` that
    update's loss (finite when its gradient made the weights non-finite), ``checkpoint`` the
    checkpoint on disk, which holds finite weights (None: none was written).
    """

    def __init__(self, message: str, step: int, loss: float, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.loss, self.checkpoint = step, loss, checkpoint


class FiniteGuard:
    """Checks the losses of a run's updates, in batches (see the module docstring).

    Args:
        learning_rate: the run's peak learning rate (named in the message).
        checkpoint: the run's checkpoint file (named in the message when it exists).
    """

    def __init__(self, learning_rate: float, checkpoint: Path) -> None:
        self.learning_rate, self.checkpoint = learning_rate, checkpoint
        self.pending: list[torch.Tensor] = []
        #: the last loss checked (finite), for the message of non-finite weights
        self.last_loss = math.nan

    def add(self, loss: torch.Tensor, step: int, saved_step: int | None) -> None:
        """Keep update ``step``'s loss (no sync); every :data:`FLUSH_EVERY` updates,
        :meth:`check`."""
        self.pending.append(loss)
        if len(self.pending) >= FLUSH_EVERY:
            self.check(step, saved_step)

    def check(self, step: int, saved_step: int | None) -> None:
        """Read the pending losses back (updates ``step - len(pending) + 1 .. step``).

        Raises:
            DivergenceError: one of them is not finite (names the first, its value and
                update, the checkpoint of step ``saved_step`` on disk, the likely causes).
        """
        if not self.pending:
            return
        losses = torch.stack(self.pending).detach().float().cpu().reshape(-1)
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            self.last_loss = float(losses[-1])
            self.pending.clear()
            return
        i = int((~finite).nonzero()[0, 0])
        bad_step, value = step - len(self.pending) + 1 + i, float(losses[i])
        self.pending.clear()
        raise self._error(f"the loss of update {bad_step} is {value}", bad_step, value,
                          saved_step)

    def check_weights(self, tensors: Iterable[torch.Tensor], step: int,
                      saved_step: int | None) -> None:
        """Check that every floating-point tensor of ``tensors`` (the networks' parameters
        and buffers, the optimizer's state) is finite, after update ``step``.

        Raises:
            DivergenceError: one is not (a non-finite gradient in an update whose loss was
                finite).
        """
        flags = [torch.isfinite(t).all() for t in tensors
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not flags or bool(torch.stack(flags).all()):
            return
        raise self._error(f"the weights after update {step} are not finite (its loss was "
                          f"{self.last_loss:.4g}, finite: a non-finite gradient)", step,
                          self.last_loss, saved_step)

    def explain(self, error: BaseException, tensors: Iterable[torch.Tensor], step: int,
                saved_step: int | None) -> None:
        """An update or a collect failed with ``error`` after update ``step`` (e.g.
        ``torch.distributions`` refusing NaN logits inside a method's loss): when the pending
        losses or the weights (``tensors``) are not finite, that is the cause; else nothing
        (the caller re-raises ``error``).

        Raises:
            DivergenceError: chained to ``error``.
        """
        try:
            self.check(step, saved_step)
            self.check_weights(tensors, step, saved_step)
        except DivergenceError as diverged:
            raise diverged from error

    def _error(self, what: str, step: int, loss: float, saved_step: int | None
               ) -> DivergenceError:
        kept = (f"{self.checkpoint} (update {saved_step}) holds the last finite weights"
                if saved_step is not None else "no checkpoint was written")
        return DivergenceError(
            f"training diverged: {what}; the run stopped and {kept}. Likely causes: a "
            f"learning rate too high for this model (--learning-rate {self.learning_rate:g}; "
            f"try a tenth of it, or a longer warmup), or data on an extreme scale "
            f"(observations or rewards far from 1, or non-finite values in the dataset)",
            step, loss,
            self.checkpoint if saved_step is not None else None)


def state_tensors(net: torch.nn.Module, optimizer: torch.optim.Optimizer
                  ) -> list[torch.Tensor]:
    """The tensors a checkpoint saves from training: the networks' parameters and buffers,
    and the optimizer's per-parameter state (AdamW's moments)."""
    tensors = [*net.parameters(), *net.buffers()]
    for per_param in optimizer.state.values():
        tensors.extend(v for v in per_param.values() if isinstance(v, torch.Tensor))
    return tensors
