"""What a user writes, read and validated without torch: configs, the registries, grid and study files."""
