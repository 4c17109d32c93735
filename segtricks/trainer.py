"""Train one ablation cell: the Sempart head on frozen backbone keys, with the configured tricks.

``train(cfg)`` writes into ``cfg.output_dir``: ``config.yaml`` (the resolved config), ``last.pt``
(every epoch, atomically) and ``best.pt`` (best validation IoU; the last epoch when there is no
validation split). A restarted training with the same training config resumes from ``last.pt`` and
ends with the same weights as an uninterrupted run on CPU: every epoch reseeds all random streams
from (seed, epoch), so nothing depends on how many epochs ran in this process.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from segtricks import checkpoint, losses
from segtricks.config import Config, resolved_yaml, training_hash
from segtricks.crop_consistency import sample_crop_boxes
from segtricks.datasets import TrainView, build_dataset
from segtricks.evaluation import evaluate_model
from segtricks.model import SegmentationModel, build_model
from segtricks.tricks import get_tricks


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the term, epoch and step."""


class ConfigMismatchError(RuntimeError):
    """The output folder holds a checkpoint of a different training config."""


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    weights_id: str
    history: List[Dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


def loss_weights(cfg: Config) -> Dict[str, float]:
    return {"ncut": cfg.loss.ncut, "fine_tv": cfg.loss.fine_tv, "coarse_tv": cfg.loss.coarse_tv,
            "consistency": cfg.loss.consistency, "crop_ncut": cfg.crop.ncut_weight,
            "crop_eq": cfg.crop.eq_weight}


def loss_terms(model: SegmentationModel, images: torch.Tensor, cfg: Config,
               crop_generator: Optional[torch.Generator], autocast: bool) -> Dict[str, torch.Tensor]:
    """All unweighted loss terms of one batch (the crop terms only when the crop trick is on)."""
    def predict(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x)

    lc = cfg.loss
    out = predict(images)
    normalised = (images - model.mean) / model.std
    terms = {
        "ncut": losses.ncut_loss(out["coarse"], losses.thresholded_affinity(out["features"], lc.tau, lc.eps)),
        "fine_tv": losses.fine_graph_tv(out["fine"], normalised, lc.sigma),
        "coarse_tv": losses.coarse_graph_tv(out["coarse"], out["features"], lc.tau, lc.eps),
        "consistency": losses.coarse_fine_consistency(out["coarse"], out["fine"]),
    }
    for trick in get_tricks(cfg.tricks):
        if trick.stage == "train":  # today: crop
            boxes = sample_crop_boxes(images.shape[0], images.shape[-1], cfg.crop.frac, crop_generator)
            terms.update(trick.apply(predict, images, out["fine"], boxes, lc.tau, lc.eps,
                                     cfg.crop.teacher_gf_radius, cfg.crop.teacher_gf_eps))
    return terms


def check_finite(terms: Dict[str, torch.Tensor], epoch: int, step: int) -> None:
    values = torch.stack([t.detach().float() for t in terms.values()])
    if not torch.isfinite(values).all():
        bad = [f"{k}={v.item()}" for k, v in zip(terms, values) if not torch.isfinite(v)]
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1}: {', '.join(bad)}; training "
            f"stopped (last good checkpoint kept). Lower optim.lr or check the inputs."
        )


def train(cfg: Config, on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None) -> TrainResult:
    """Train (or resume, or return a finished) training of ``cfg``.

    ``on_epoch_end(epoch, metrics)`` runs after each epoch's checkpoint is written (MLflow logging,
    Optuna pruning); an exception it raises stops training with the checkpoint already safe.
    """
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    device = resolve_device(cfg.device)
    get_tricks(cfg.tricks)  # unknown trick names fail here, before any work
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay)
    train_set = TrainView(build_dataset(cfg.data.train), cfg.data.image_size, cfg.data.resize_short,
                          cfg.data.train.on_error)
    if cfg.data.val and not build_dataset(cfg.data.val).has_masks:  # fail before training, not after
        raise ValueError(f"validation dataset {cfg.data.val.name!r} has no masks; model selection needs them")
    identity = training_hash(cfg)
    history: List[Dict[str, float]] = []
    start, best_score, best_epoch = 0, -float("inf"), -1
    if last_path.is_file():
        state = checkpoint.load(last_path)
        if state["training_hash"] != identity:
            raise ConfigMismatchError(
                f"{last_path} was trained with another config (training hash {state['training_hash'][:12]}, "
                f"this config {identity[:12]}); use another output_dir or remove that folder"
            )
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, state["history"]
        best_score, best_epoch = state["best_score"], state["best_epoch"]
    (out_dir / "config.yaml").write_text(resolved_yaml(cfg))
    weights = loss_weights(cfg)

    for epoch in range(start, cfg.optim.epochs):
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        loader = DataLoader(train_set, batch_size=cfg.optim.batch_size, shuffle=True,
                            num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(seed),
                            collate_fn=TrainView.collate,
                            pin_memory=cuda, persistent_workers=False)
        crop_generator = torch.Generator().manual_seed(seed)
        steps = len(loader) if cfg.optim.steps_per_epoch is None else min(len(loader), cfg.optim.steps_per_epoch)
        model.train()
        sums: Dict[str, float] = {}
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False)
        for step, images in enumerate(bar):
            if step >= steps:
                break
            images = images.to(device, non_blocking=True)
            if cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            terms = loss_terms(model, images, cfg, crop_generator, autocast=cuda)
            check_finite(terms, epoch, step)
            loss = sum(weights[k] * v for k, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in {**terms, "loss": loss}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()})
        bar.close()
        metrics = {f"train/{k}": v / max(steps, 1) for k, v in sums.items()}
        score = float(epoch)  # without a validation split the latest epoch is the best
        if cfg.data.val is not None:
            metrics["val/iou"] = score = evaluate_model(model, cfg, cfg.data.val, device=device,
                                                        with_structure=False, progress=False).results()["iou"]
        metrics["epoch"] = epoch
        history.append(metrics)
        improved = score > best_score
        if improved:
            best_score, best_epoch = score, epoch
        state = {"head": model.head.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "history": history, "best_score": best_score, "best_epoch": best_epoch,
                 "training_hash": identity, "weights_id": model.backbone.weights_id}
        if improved:
            checkpoint.save_atomic({"head": state["head"], "epoch": epoch, "training_hash": identity,
                                    "weights_id": model.backbone.weights_id}, best_path)
        checkpoint.save_atomic(state, last_path)
        tqdm.write(f"epoch {epoch + 1}/{cfg.optim.epochs}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)

    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    return TrainResult(out_dir, best_path, last_path, model.backbone.weights_id, history, best_epoch)
