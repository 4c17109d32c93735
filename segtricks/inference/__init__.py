"""Using a trained model on new images: the predictor (``predictor``), the model as an MLflow model
(``mlflow_model``); the ``segment`` command (``segtricks.segment``) writes their masks as PNGs."""
