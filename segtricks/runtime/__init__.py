"""Where and how the computation runs: the device and its precision rule, seeds, and CPU threads."""
