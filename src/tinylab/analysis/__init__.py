"""Analysis of runs: the paper's reference numbers, tidy frames of a run, figures, the report."""
