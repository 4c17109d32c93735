"""The paper's contribution: the Sempart losses, crop consistency, the guided filter and bilateral solver, and the trick registry."""
