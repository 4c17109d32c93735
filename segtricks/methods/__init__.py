"""The paper's other systems, beside Sempart, as registered methods (``segtricks.methods.base.METHODS``):
TokenCut, LOST and Deep Spectral (training-free: an eigenproblem or a seed on a frozen backbone's keys),
each computed as its authors' code computes it. ``docs/methods.md`` says what each does and where we
had to choose."""
