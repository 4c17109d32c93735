"""The training loop's hooks, and ``build_hooks``, which puts the built-in ones in their order.

Behaviour around the loop (``segtricks.engine.loop.fit``) is added through hooks, in the manner of
detectron2 and DINO: validation, checkpointing, the per-epoch progress line, MLflow logging and Optuna
pruning each implement ``before_train / after_epoch / after_train`` on the ``LoopState`` that the loop
and its hooks share. MLflow and Optuna are imported only by the hooks that use them, so a training
without a store or a study loads neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Sequence

from tqdm.auto import tqdm

from segtricks.engine import checkpoint
from segtricks.evaluation.model_evaluation import evaluate_model
from segtricks.spec.config import Config, DatasetRef

if TYPE_CHECKING:
    import optuna
    import torch

    from segtricks.engine.training import Training
    from segtricks.models.model import SegmentationModel
    from segtricks.tracking.store import RunLog


@dataclass
class LoopState:
    """What the loop and its hooks share. ``score`` is this epoch's model-selection score (set by
    the validation hook; the epoch number when there is none, so the latest epoch is the best)."""

    cfg: Config
    model: SegmentationModel
    optimizer: torch.optim.Optimizer
    device: torch.device
    training_hash: str
    epoch: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    best_score: float = -float("inf")
    best_epoch: int = -1
    score: float = 0.0
    # loss scaling for fp16 (``Precision.scales_loss``); disabled, it passes the loss and step through
    scaler: torch.amp.GradScaler = field(default_factory=lambda: _scaler(False))


def _scaler(enabled: bool) -> "torch.amp.GradScaler":
    import torch
    return torch.amp.GradScaler("cuda", enabled=enabled)


class Hook:
    """Base class of training hooks; override the calls you need. An exception raised by a hook
    stops training (hooks after the checkpoint hook find the epoch already saved).

    ``after_train`` runs however the loop ends, after an exception too (detectron2's semantics), so
    it must not assume that ``before_train`` or every epoch ran."""

    def before_train(self, state: LoopState) -> None:
        pass

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        pass

    def after_train(self, state: LoopState) -> None:
        pass


class Validation(Hook):
    """Adds ``val.iou`` on the validation split (our protocol, no post-processing) and sets the
    epoch's selection score to it."""

    def __init__(self, ref: DatasetRef) -> None:
        self.ref = ref

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        ev = evaluate_model(state.model, state.cfg, self.ref, device=state.device, with_structure=False,
                            progress=False)
        metrics["val.iou"] = state.score = ev.results()["iou"]


class Checkpointing(Hook):
    """Writes ``best.pt`` (when the epoch's score improved), ``last.pt`` and ``status.json``, in
    that order, each atomically."""

    def __init__(self, training: Training) -> None:
        self.training = training

    def after_epoch(self, state: LoopState, metrics: Dict[str, float]) -> None:
        state.history.append({**metrics, "epoch": state.epoch})
        improved = state.score > state.best_score
        if improved:
            state.best_score, state.best_epoch = state.score, state.epoch
        head, weights = state.model.head.state_dict(), state.model.backbone.weights_id
        if improved:
            checkpoint.save_atomic({"head": head, "epoch": state.epoch, "training_hash": state.training_hash,
                                    "weights_id": weights}, self.training.best_path)
        checkpoint.save_atomic({"head": head, "optimizer": state.optimizer.state_dict(), "epoch": state.epoch,
                                "history": state.history, "best_score": state.best_score,
                                "best_epoch": state.best_epoch, "training_hash": state.training_hash,
                                "weights_id": weights}, self.training.last_path)
        self.training.write_status(state.epoch + 1, state.best_epoch, state.best_score, weights, state.history)


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
        self.trial.report(metrics["val.iou"], state.epoch)
        if state.epoch + 1 < state.cfg.optim.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch + 1} (validation IoU {metrics['val.iou']:.3f})")


def build_hooks(training: Training, hooks: Sequence[Hook] = ()) -> List[Hook]:
    """The hooks of ``training``'s loop in the order they run after every epoch: the built-in ones,
    then ``hooks`` (the caller's)."""
    built: List[Hook] = []
    if training.cfg.data.val:
        # First: it adds val.iou to the epoch's metrics and sets the epoch's selection score, which the
        # hooks after it read (checkpointing chooses best.pt by the score and keeps the metrics in the
        # history; the progress line, the MLflow logger and the pruner report val.iou).
        built.append(Validation(training.cfg.data.val))
    # Before every hook that may raise (a pruner, an interrupt, a logger whose store is down): the
    # epoch is on disk, so a training stopped by a later hook resumes after this epoch.
    built.append(Checkpointing(training))
    # After the save, so a printed epoch is never repeated by a rerun; before the caller's hooks, so an
    # epoch that one of them stops is still printed.
    built.append(ProgressLine())
    # The caller's hooks last: they see the complete metrics, and an exception they raise (Pruning's
    # TrialPruned) finds the epoch saved.
    return [*built, *hooks]
