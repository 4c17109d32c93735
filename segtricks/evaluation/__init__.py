"""Scoring models and saliency maps: protocols, predictions, their caches, the metrics."""
