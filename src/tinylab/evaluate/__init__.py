"""tinylab.evaluate: the paper's benchmarks through lm-eval or InstructEval's rules (MMLU, BBH,
DROP), offline suites, HumanEval in a sandbox, per-domain perplexity; results as JSON per
checkpoint, reused when still valid. What to run is the eval params file alone:
params/eval/paper.yaml is the paper's protocol.

    tinylab eval outputs/runs/demo/stages/base/hf --params params/eval/demo.yaml \
        --out outputs/runs/demo/eval

results = evaluate_stage("params/eval/demo.yaml", "outputs/runs/demo", "base")
table = scores_table(results); plot_scores(table)   # or evaluate_checkpoint(hf_dir, cfg, ...)
"""

from tinylab.evaluate.errors import EvalError
from tinylab.evaluate.humaneval import evaluate_humaneval, load_problems, pass_at_k
from tinylab.evaluate.offline import ensure_suite
from tinylab.evaluate.plots import plot_scores, scores_table, timings
from tinylab.evaluate.results import load_results, model_identity
from tinylab.evaluate.runner import evaluate_checkpoint, evaluate_stage
from tinylab.evaluate.sandbox import Limits, SandboxResult, run_program, sandbox_mode

__all__ = [
    "EvalError",
    "Limits",
    "SandboxResult",
    "ensure_suite",
    "evaluate_checkpoint",
    "evaluate_stage",
    "evaluate_humaneval",
    "load_problems",
    "load_results",
    "model_identity",
    "pass_at_k",
    "plot_scores",
    "run_program",
    "sandbox_mode",
    "scores_table",
    "timings",
]
