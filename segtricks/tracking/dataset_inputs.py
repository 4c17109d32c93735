"""The datasets a cell's run used, as MLflow dataset inputs: shown on the run page (Datasets) and in the
runs table's Dataset column, searchable (``datasets.digest``).

One input per dataset and role, its context ``training``, ``validation`` or ``evaluation``: name (with
the split, for a dataset that has splits), source (the folder its files share, resolved), and a digest of
the item ids and file sizes (``segtricks.data.datasets.digest``), so that two runs on different copies
of DUTS-TE differ visibly. The profile holds the split, the number of items (and those left out), the
limit and, for the synthetic set, its seed and generator version. Listing a dataset reads no image.
A distillation cell also has its teacher's pseudo-masks as a training input (``pseudo_mask_input``).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from segtricks.data.datasets import DATASETS, build_dataset, digest
from segtricks.data.pseudo_masks import PseudoMaskFolder
from segtricks.config.schema import Config, DatasetRef

TRAINING, VALIDATION, EVALUATION = "training", "validation", "evaluation"
GENERATED = "segtricks.data.synthetic"  # the source of a dataset that has no files


def dataset_input(ref: DatasetRef, context: str) -> DatasetInput:
    """One dataset as an MLflow input in ``context``."""
    with warnings.catch_warnings():  # its bad files are reported when it is loaded, not twice
        warnings.simplefilter("ignore")
        raw = build_dataset(ref)
    files = [str(p.resolve()) for i in range(len(raw)) for p in raw.item_files(i)]
    source = os.path.commonpath(files) if files else GENERATED
    if files and Path(source).is_file():  # a one-item dataset: its folder
        source = str(Path(source).parent)
    profile = {"split": ref.split, "num_items": len(raw), "skipped": len(raw.skipped), "limit": ref.limit,
               **raw.identity()}
    split = "splits" in DATASETS.attributes(ref.name)
    dataset = Dataset(name=f"{ref.name}.{ref.split}" if split else ref.name, digest=digest(raw),
                      source_type="local" if files else "code", source=json.dumps({"uri": source}),
                      profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def pseudo_mask_input(folder: PseudoMaskFolder, record: Dict[str, object]) -> DatasetInput:
    """A complete export of a teacher's pseudo-masks (``segtricks.data.pseudo_masks``) as the training
    input of a cell that distils it: named after the teacher and the dataset, its digest that of the
    masks' bytes."""
    dataset = Dataset(name=f"pseudo-masks of {record['teacher']} on {record['dataset']}", digest=str(record["digest"]),
                      source_type="local", source=json.dumps({"uri": str(folder.dir.resolve())}),
                      profile=json.dumps({k: v for k, v in record.items() if k != "digest"}))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, TRAINING)])


def cell_inputs(cfg: Config, trains: bool) -> Tuple[List[DatasetInput], Dict[str, Dataset]]:
    """Every dataset of a cell: its training and validation sets when it trains a model (or reuses one,
    trained on them), and its evaluation sets; and the evaluation sets by name, which the evaluation's
    metrics are linked to."""
    refs = [(cfg.data.train, TRAINING), *([(cfg.data.val, VALIDATION)] if cfg.data.val else [])] if trains else []
    inputs = [dataset_input(ref, context) for ref, context in [*refs, *((r, EVALUATION) for r in cfg.eval)]]
    return inputs, {ref.name: i.dataset for ref, i in zip(cfg.eval, inputs[len(refs):])}
