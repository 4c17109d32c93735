"""segtricks: Sempart + the two tricks (crop consistency, guided filter) as tracked ablations."""

__version__ = "0.1.0"
