"""What a user writes, read and validated without torch: the dataclass config (``schema``), grid and study
files, and the metric vocabulary. The registries' class lives in ``segtricks.registry``."""
