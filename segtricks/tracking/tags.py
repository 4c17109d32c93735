"""The MLflow tag names segtricks writes and reads, written once beside the store.

Runs are found by their tags (never by their names): a grid's cell runs by ``CONFIG_HASH``, the run that
trains a shared training by ``TRAINING_HASH`` and ``ROLE``, the tables' runs by ``CELL`` without
``SUPERSEDED_BY``. Renaming a tag makes every earlier store unreadable: these values never change.
"""
from __future__ import annotations

# a cell run
GRID = "grid"
CELL = "cell"
BACKBONE = "backbone"
TRICKS = "tricks"
SEED = "seed"  # the config's training seed (a param too): what tells the replicas of a cell apart
EVAL_PROTOCOL = "eval_protocol"  # the protocols scored, comma-separated
CONFIG_HASH = "config_hash"  # identifies the cell: a FINISHED run with it means the cell is done
TRAINING_HASH = "training_hash"  # identifies the training that cells differing only in post-processing share
WEIGHTS = "weights"  # the backbone weights id (or maps:<folder>) the run's numbers come from
PRECISION = "precision"  # fp32, bf16 or fp16: how the model ran for the run's evaluation (Precision.name)
ROLE = "role"  # ROLE_TRAIN on the run that trains a shared training, ROLE_STUDY on a study's parent run
ROLE_TRAIN = "train"
ROLE_STUDY = "study"
MODEL_FROM_RUN = "model_from_run"  # on a cell that evaluates another cell's training: that cell's run id
SUPERSEDED_BY = "superseded_by"  # on a result replaced by a --force rerun: the run that replaced it

# claims (segtricks.tracking.claims, Store.claim)
HEARTBEAT = "heartbeat"  # unix seconds, refreshed while a worker holds the run
CLAIMED_AT = "claimed_at"
TAKEOVER = "takeover."  # + a worker's id: when it took over a dead worker's run (Store.take_over)
WORKER = "worker"  # host:pid
SLURM_JOB = "slurm_job"
CUDA_VISIBLE_DEVICES = "cuda_visible_devices"

# studies
STUDY = "study"
TRIAL = "trial"
OPTUNA_STATE = "optuna.state"
PRUNED = "pruned"
TRAINED = "trained"

# the grid's analysis run (tables and figures; no CELL tag, so that cells never see it)
ANALYSIS = "segtricks.analysis"
UPDATED = "updated"  # when make_tables last logged to it

# MLflow's own
RUN_NAME = "mlflow.runName"
PARENT_RUN = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
EXPERIMENT_KIND = "mlflow.experimentKind"
