"""The code MLflow loads the logged model from (MLflow's "models from code"): ``log_trained_model``
passes this file's path as ``python_model``, so the model is this code plus its artifacts rather than
a cloudpickled object; loading runs it, and it names the ``PythonModel`` to use."""
from mlflow.models import set_model

from segtricks.inference.mlflow_model import SegmentationPyfunc

set_model(SegmentationPyfunc())
