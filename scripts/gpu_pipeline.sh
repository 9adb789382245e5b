#!/usr/bin/env bash
# The GPU run of issue 20 in one command, on a machine set up from a wheelhouse
# (scripts/gpu_env.sh; README, "GPU"), from the repository root:
#
#   scripts/gpu_pipeline.sh [OUT] [pipeline|bench|tests|tests-beside]...
#                                   (default: pipeline bench tests, one after another;
#                                    tests-beside: the tests on the same GPU during the pipeline)
#   DEADLINE_S=N ...                 everything within N seconds of the start
#
# pipeline: `tinylab run params/pipelines/gpu.yaml` (the notebooks under Papermill; its log, the
# report, the manifest and the executed base notebook are copied into OUT); bench:
# bench/throughput.py's `default` variant at the pipeline's batch (2 micro-batches per step) on
# the same card; tests: `pytest -m gpu`. Ends with the summary table (scripts/gpu_summary.py).
out="${1:-outputs/gpu}"
shift 2>/dev/null
parts="${*:-pipeline bench tests}"
mkdir -p "$out"
. scripts/gpu_env.sh install || exit 1
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  df -h . | tail -1; } | tee "$out/card.txt"
run=outputs/runs/gpu
gpu_tests() {
    python3 -m pytest -m gpu tests/test_gpu.py -rA -q -s -p no:cacheprovider 2>&1 \
        | tee "$out/pytest-gpu.log" | grep -E "passed|failed|error|attention kernels|logits|loss diff|^(PASSED|FAILED|SKIPPED|ERROR)" | tail -20
}
left() { echo $(( ${DEADLINE_S:-100000} - SECONDS - ${1:-10} )); }  # seconds to DEADLINE_S
if [[ " $parts " == *" tests-beside "* ]]; then  # on the same GPU while the pipeline runs
    timeout "$(left 30)" bash -c "$(declare -f gpu_tests); out=$out; gpu_tests" &
fi
if [[ " $parts " == *" pipeline "* ]]; then
    # within DEADLINE_S the pipeline stops (SIGTERM: its steps are recorded as failed) and what
    # it finished still comes back: everything but weights, checkpoints and token shards, enough
    # for `tinylab run params/pipelines/gpu.yaml --from report` elsewhere
    /usr/bin/time -f "pipeline wall %e s" timeout "$(left 25)" \
        tinylab run params/pipelines/gpu.yaml --jobs 2 2>&1 | tee "$out/pipeline.log"
    cp "$run/manifest.json" "$run/report.html" "$out/" 2>/dev/null
    tar -czf "$out/run-small.tar.gz" --exclude='*.safetensors' --exclude='*.pt' \
        --exclude='*.bin' --exclude='*.distcp' --exclude='checkpoints' --exclude='hf' \
        --exclude='report.html' "$run" 2>/dev/null
fi
wait
if [[ " $parts " == *" bench "* ]]; then
    rm -f "$out/bench.jsonl"
    # within a time limit for the whole script (DEADLINE_S), the bench gets what is left
    timeout "$(left)" python3 bench/throughput.py --variants default --steps 20 --skip 8 --accum 2 \
        --json "$out/bench.jsonl" 2>&1 | tee "$out/bench.log" | tail -8
fi
if [[ " $parts " == *" tests "* ]]; then
    gpu_tests
fi
[ -f "$run/manifest.json" ] && python3 scripts/gpu_summary.py "$run" "$out/bench.jsonl"
