"""A training's best checkpoint as an MLflow model: ``runs:/<run id>/model``, a pyfunc with a model page.

The model holds the head's weights (``best.pt``: head, weights id, training hash), the resolved config
(``config.yaml``) and, in its metadata, the backbone's name and weights id. It holds no backbone
weights (they are tens of MB, and published elsewhere): loading it resolves them as training does
(``cfg.backbone.weights``, ``$SEGTRICKS_WEIGHTS``, the torch.hub cache; ``segtricks.models.backbones``)
and fails with one line when they are absent or are other weights than the head was trained on.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    masks = model.predict([hxwx3_uint8, ...], params={"post": "gf"})   # a list of HxW float32 in [0, 1]

``predict`` takes a list of HxWx3 uint8 RGB arrays (any sizes) and returns one soft foreground mask
per image at its size, as ``python -m segtricks.segment`` computes them (``segtricks.inference.
predictor``); ``params={"post": "gf"}`` (or ``"bf"``, ``"gf,bf"``) applies post-processing tricks.
Loading needs segtricks installed (the model's code is this module). Torch-free at import.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import mlflow
from mlflow.models import Model, ModelSignature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types.schema import ParamSchema, ParamSpec

from segtricks.config.schema import load_config
from segtricks.tracking.tags import NOTE

if TYPE_CHECKING:
    from segtricks.engine.training import Training
    from segtricks.tracking.store import RunLog

MODEL_NAME = "model"  # runs:/<id>/model
DESCRIPTION = ("segtricks segmentation head ({backbone}, backbone weights {weights_id}). Holds the head's "
               "weights and the resolved config, NOT the backbone's weights: loading resolves them as "
               "training does (backbone.weights, $SEGTRICKS_WEIGHTS, the torch.hub cache) and fails when "
               "they are absent or differ. predict(list of HxWx3 uint8 arrays, params={{'post': 'gf'}}) "
               "returns a list of HxW float32 soft masks in [0, 1].")
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")  # models from code: no cloudpickled object
SIGNATURE = ModelSignature(params=ParamSchema([ParamSpec("post", "string", "")]))
# what loading it needs besides segtricks itself (pinned, so that pip does not infer them by loading it)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "numpy", "pillow", "pyyaml", "opencv-contrib-python-headless")


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc flavour (see the module docstring); ``predictor`` is set when loaded."""

    # MLflow's type-hint validation is for inputs a hint describes; a list of HxWx3 arrays of any sizes
    # has none, and a hinted ``predict`` makes MLflow replace SIGNATURE by one without its params (the
    # loaded model then ignored ``post``). The hook MLflow's own ChatModel uses: no wrapping, no warning.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from segtricks.inference.predictor import Predictor
        from segtricks.engine.training import load_trained

        cfg = load_config(context.artifacts["config"])
        self.predictor = Predictor(load_trained(cfg, Path(context.artifacts["checkpoint"])), cfg)

    def predict(self, context, model_input, params=None):
        post = (params or {}).get("post") or ""
        self.predictor.post = [name for name in post.split(",") if name]
        return self.predictor.predict(list(model_input))


def logged_model_id(run: RunLog) -> Optional[str]:
    """The id of the MLflow model called ``model`` logged on ``run``, if any."""
    outputs = run.client.get_run(run.id).outputs
    for output in (outputs.model_outputs if outputs else []) or []:
        if run.client.get_logged_model(output.model_id).name == MODEL_NAME:
            return output.model_id
    return None


def log_trained_model(run: RunLog, training: Training) -> str:
    """Log ``training``'s best checkpoint as the MLflow model ``model`` of ``run``, once (a run that
    has it already is left as it is): the model's id."""
    logged = logged_model_id(run)
    if logged is not None:
        return logged
    status = training.status()
    metadata = {"backbone": training.cfg.backbone.name, "backbone_weights": str(training.cfg.backbone.weights),
                "weights_id": status.weights_id, "training_hash": training.hash, "best_epoch": status.best_epoch,
                "holds_backbone_weights": False}
    requirements = ["segtricks"] + [f"{p}=={importlib.metadata.version(p)}" for p in REQUIREMENTS]
    # created here, in the run's experiment (Model.log would put it in the active experiment, 0)
    model = run.client.create_logged_model(run.experiment_id(), name=MODEL_NAME, source_run_id=run.id,
                                           tags={"backbone": metadata["backbone"], "weights_id": status.weights_id,
                                                 NOTE: DESCRIPTION.format(**metadata)})
    # Model.log reads the global tracking URI: the run's store, for this call only
    # with no input example: one would be checked by loading the backbone and predicting, on every run
    with _use_tracking_uri(run.client.tracking_uri), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)  # colour codes first
        Model.log(None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run.id, model_id=model.model_id,
                  python_model=str(PYFUNC_CODE), signature=SIGNATURE, pip_requirements=requirements,
                  artifacts={"checkpoint": str(training.folder.best), "config": str(training.folder.config)},
                  metadata=metadata, step=max(status.best_epoch, 0))  # the model page shows the best epoch's metrics
    return model.model_id
