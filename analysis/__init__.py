"""Paper tables and plots regenerated from the logged MLflow runs."""
