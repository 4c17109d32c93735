"""Running many cells: planning against the store, the grid and study runners and their tasks, the
checks before a launch, the cost estimates and a study's plots."""
