"""A teacher cell's pseudo-masks on a training set: the first stage of a distillation cell
(``distill.teacher``; docs/methods.md#distillation).

The teacher predicts as ``segment`` does (``Predictor``: its trained model, or its training-free method,
each image at its own size, through the teacher's own post-processing), and each soft mask above the
threshold is written as the item's PNG (``segtricks.data.pseudo_masks`` owns the folder). Masks already
on disk are kept, so a killed export continues where it stopped and two students of one teacher share
one export; the completion record is written last. It names the teacher's checkpoint: a teacher
trained again since (its training folder removed; ``--force`` re-evaluates, it does not retrain) has its
masks exported again.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from tqdm.auto import tqdm

from segtricks.config.schema import Config, DatasetRef
from segtricks.data.datasets import Subset, build_dataset
from segtricks.data.pseudo_masks import PseudoMaskFolder
from segtricks.engine.training import State, Training
from segtricks.inference.predictor import Predictor
from segtricks.method.tricks import post_trick_names


def checkpoint_stamp(training: Training) -> str:
    """Which checkpoint a trained teacher predicted with: its ``best.pt``'s size and modification time
    (a new training of the teacher writes a new one)."""
    stat = training.best_path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def export_pseudo_masks(teacher_name: str, teacher_cfg: Config, teacher_training: Optional[Training],
                        ref: DatasetRef, threshold: float, folder: PseudoMaskFolder,
                        device: torch.device) -> Dict[str, object]:
    """Export (or finish exporting) the binary masks of the teacher (its config, and its ``Training``
    when its method trains) on ``ref`` into ``folder``: the completion record (``PseudoMaskFolder.complete``)."""
    if teacher_training is not None and teacher_training.status().state is not State.COMPLETE:
        raise RuntimeError(f"teacher cell {teacher_name}: its training is {teacher_training.status()}; its "
                           f"pseudo-masks need its finished model (the grid runs the teacher first: rerun it, "
                           f"with --rerun-failed if the teacher failed)")
    model_stamp = None if teacher_training is None else checkpoint_stamp(teacher_training)
    done = folder.completion()
    if done is not None and done.get("teacher_model") == model_stamp:
        return done
    if done is not None:  # the teacher was trained again since (--force): its masks are another model's
        folder.clear()
    raw = build_dataset(ref)
    ids = [raw.item_id(i) for i in range(len(raw))]
    todo = [i for i, item_id in enumerate(ids) if not folder.mask_path(item_id).is_file()]
    if todo:
        post = post_trick_names(teacher_cfg.tricks)
        model = None if teacher_training is None else teacher_training.model()
        predictor = Predictor(model, teacher_cfg, post, device)
        with tqdm(total=len(todo), desc=f"pseudo-masks of {teacher_name}", unit="image") as bar:
            for batch_ids, masks, skipped in predictor.batches(Subset(raw, todo), teacher_cfg.data.num_workers,
                                                               on_error=ref.on_error):
                for item_id, soft in zip(batch_ids, masks):
                    folder.write_mask(item_id, soft > threshold)
                bar.update(len(batch_ids) + len(skipped))
    about = {"teacher": teacher_name, "dataset": ref.name, "split": ref.split, "threshold": threshold,
             "teacher_model": model_stamp}
    return folder.complete(ids, about)
