"""The MLflow store (torch-free): runs, claims and heartbeats, what a run logs."""
