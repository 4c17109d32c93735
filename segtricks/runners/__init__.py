"""Running many cells: planning against the store, the grid and study runners, the local and Slurm launchers, preflight checks and cost estimates."""
