"""Sempart and the paper's other systems as registered methods (``segtricks.methods.registry.METHODS``):
Sempart and FOUND train (a ``TrainingRecipe`` each); TokenCut, LOST and Deep Spectral are training-free
(an eigenproblem or a seed on a frozen backbone's keys). Each is computed as its authors' code computes
it; ``docs/methods.md`` says what each does and where we had to choose."""
