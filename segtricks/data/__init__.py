"""Datasets (registry, folder layouts, the synthetic set) and the torch views and loaders the loop reads."""
