"""Analysis of runs: `runs` (a run folder as tidy frames), `tables` and `figures` (what the
report shows), `deviations` (settings against the paper's), `reference` (the paper's reported
numbers), `adapters` (full vs LoRA), `probe` (a model by hand), `publish` (report.html)."""
