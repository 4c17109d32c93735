"""The training loop's hooks: validation, checkpointing, the per-epoch progress line, MLflow logging and
Optuna pruning, each implementing ``segtricks.engine.loop.Hook`` on the ``LoopState`` the loop shares.

As in detectron2, a hook receives what it needs, never the trainer: validation an evaluation
function, checkpointing a ``Checkpointer`` and the training's status writer, logging a run. Which hooks
a training runs, and in which order, is ``Training.build_hooks``'s (the defaults). MLflow and Optuna are
imported only by the hooks that use them, so a training without a store or a study loads neither.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List

from tqdm.auto import tqdm

from segtricks.config.vocabulary import VALIDATION_METRIC
from segtricks.engine.checkpoint import Checkpointer
from segtricks.engine.loop import Hook, LoopState

if TYPE_CHECKING:
    import optuna
    import torch

    from segtricks.tracking.store import RunLog


class Validation(Hook):
    """Adds ``val.iou`` (``VALIDATION_METRIC``) from ``evaluate(model, device)`` (the validation split,
    our protocol, no post-processing) and sets the epoch's selection score to it."""

    def __init__(self, evaluate: Callable[["torch.nn.Module", "torch.device"], float]) -> None:
        self.evaluate = evaluate

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        metrics[VALIDATION_METRIC] = state.score = self.evaluate(state.model, state.device)


class Checkpointing(Hook):
    """Writes ``best.pt`` (when the epoch's score improved) and ``last.pt`` through ``checkpointer``,
    then the status summary through ``write_status``: in that order, each atomically."""

    def __init__(self, checkpointer: Checkpointer, write_status: Callable[[LoopState], None]) -> None:
        self.checkpointer, self.write_status = checkpointer, write_status

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        state.history.append({**metrics, "epoch": state.epoch})
        improved = state.score > state.best_score
        if improved:
            state.best_score, state.best_epoch = state.score, state.epoch
        self.checkpointer.save_epoch(state.model, state.optimizer, state.scaler, state.epoch, state.history,
                                     state.best_score, state.best_epoch, improved)
        self.write_status(state)


class ProgressLine(Hook):
    """One line per finished epoch with every metric (the step bar lives in ``train_one_epoch``)."""

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        tqdm.write(f"epoch {state.epoch + 1}/{state.cfg.optim.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))


class EpochLogger(Hook):
    """Each finished epoch's metrics to the MLflow run, at step = epoch."""

    def __init__(self, run: RunLog) -> None:
        self.run = run

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        self.run.log_metrics(metrics, step=state.epoch)


class Pruning(Hook):
    """Reports each epoch's validation IoU to the Optuna trial and stops a trial the pruner rejects
    (the epoch's checkpoint is already saved, so an equal later trial resumes it). The last epoch is
    reported but never pruned: its training is complete, and pruning would only discard it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.epochs_run: List[int] = []

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        import optuna

        self.epochs_run.append(state.epoch)
        self.trial.report(metrics[VALIDATION_METRIC], state.epoch)
        if state.epoch + 1 < state.cfg.optim.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch + 1} (validation IoU {metrics[VALIDATION_METRIC]:.3f})")
