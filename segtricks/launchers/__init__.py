"""How a grid or a study is started: in this process, in local worker processes, or as Slurm array tasks."""
