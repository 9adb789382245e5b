"""The bad-input battery (issue 17): what a careless or hostile user can hand tinylab, driven
through the real `tinylab` command (`cli.run`, in this process: seconds instead of minutes).

Every case must exit non-zero with ONE message (one `error: ` line, which may be followed by
the lines of the same message) that names the file, key or value at fault and says what to do;
no traceback unless `--debug` (checked for a sample of every area); and every file that was
there before the command byte-identical after it (lock files aside: they record their holder;
and what a case lists in `may_change`, with its reason). A case builds its bad input in a folder
of its own from a small world (params tree, prepared data, a trained two-step stage, a tiny HF
model) made once per module.

Disk full uses a small tmpfs where the test can mount one (root), else a simulated ENOSPC; a
read-only folder is a read-only bind mount for root, else a folder without write permission.

    pytest tests/test_bad_inputs.py -q
    python tests/test_bad_inputs.py     # the battery's table: case, exit code, message
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from _evaluate_fixtures import tiny_hf_dir
from _train_fixtures import DATA, MODEL, write_corpora

from tinylab import cli
from tinylab.config.loader import deep_merge
from tinylab.layout import INDEX_FILE

TABLE_ENV = "TINYLAB_BATTERY_TABLE"  # a file each case appends its row to (see __main__)


# --------------------------------------------------------------------------------------------
# the world every case starts from

STAGE = """\
name: base
model: small
data: ../data/small.yaml
mixture: {prose: 1.0}
max_tokens: 2048
micro_batch_size: 4
global_batch_tokens: 1024
optim: {lr: 1.0e-2, min_lr: 1.0e-3}
schedule: {warmup_tokens: 1024, decay_tokens: 8192}
checkpoint: {every_steps: 1, keep_last: 2}
validation: {every_steps: 2, max_windows: 4}
parallel: {precision: fp32}
"""
EVAL = "perplexity: true\nperplexity_max_windows: 2\ndevice: cpu\nbatch_size: 4\n"


@dataclass
class World:
    """Files made once per module; cases copy what they break."""

    root: Path
    params: Path  # params/ with models/small, data/small, stages/base, eval/ppl
    data: Path  # prepared data of params/data/small.yaml
    run: Path  # a run folder with data/ and stage base trained for two steps
    hf: Path  # a tiny HF model folder (safetensors + tokenizer)

    def copy_params(self, tmp: Path) -> Path:
        shutil.copytree(self.params, tmp / "params")
        return tmp / "params"

    def copy_run(self, tmp: Path) -> Path:
        shutil.copytree(self.run, tmp / "run", symlinks=True)
        return tmp / "run"

    def copy_data(self, tmp: Path) -> Path:
        shutil.copytree(self.data, tmp / "data")
        return tmp / "data"

    def run_with_own_data(self, tmp: Path) -> Path:
        """A copy of the trained run whose data/ is a copy too (for cases that break it)."""
        run = self.copy_run(tmp)
        (run / "data").unlink()
        shutil.copytree(self.data, run / "data")
        return run

    def stage(self, name: str = "base") -> str:
        return str(self.params / "stages" / f"{name}.yaml")


def _make_world(root: Path) -> World:
    write_corpora(root)
    params = root / "params"
    for kind in ("models", "data", "stages", "eval", "pipelines"):
        (params / kind).mkdir(parents=True)
    data = deep_merge(DATA, {})
    for source in data["sources"].values():
        source["paths"] = [str(root / p) for p in source["paths"]]
    (params / "data" / "small.yaml").write_text(json.dumps(data))
    (params / "models" / "small.yaml").write_text(json.dumps(MODEL))
    (params / "stages" / "base.yaml").write_text(STAGE)
    (params / "eval" / "ppl.yaml").write_text(EVAL)
    prepared = tinylab("prepare", str(params / "data" / "small.yaml"), "--out", str(root / "data"),
                       "--no-progress")  # fmt: skip
    assert prepared.code == 0, prepared.stderr
    run = root / "run"
    run.mkdir()
    (run / "data").symlink_to(root / "data")
    trained = tinylab("train", str(params / "stages" / "base.yaml"), "--run-dir", str(run))
    assert trained.code == 0, trained.stderr
    hf = tiny_hf_dir(root / "tiny-hf")
    return World(root, params, root / "data", run, hf)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = _make_world(tmp_path_factory.mktemp("world"))
        before = _snapshot(built.root)
        yield built
        assert _snapshot(built.root) == before, "a case changed the shared world"
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# running the command


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """The error message: stderr from its `error: ` line on."""
        at = self.stderr.find("error: ")
        return self.stderr[at:] if at >= 0 else ""


def tinylab(*args: str) -> Outcome:
    """`tinylab ARGS` as the console script runs it, in this process; a non-UserError escapes
    `cli.run` as it would in the script and is recorded as exit 1 with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["tinylab", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - what the script would print
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
    return Outcome(code, out.getvalue(), err.getvalue())


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes under `root` (symlinks not followed into other trees)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


# --------------------------------------------------------------------------------------------
# disk full and read-only folders


@functools.cache
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with the right capability)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/.tinylab-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0  # fmt: skip
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


@contextlib.contextmanager
def full_disk(folder: Path, *, free_bytes: int = 4096) -> Iterator[Path]:
    """`folder` on a small tmpfs with `free_bytes` left (what was in `folder` copied onto it);
    without mount rights, a simulated full disk: every `os.fsync` raises ENOSPC."""
    if not can_mount():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", _no_space)
            yield folder
        return
    staged = folder.with_name(folder.name + ".staged")
    os.replace(folder, staged)
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True)
    try:
        shutil.copytree(staged, folder, dirs_exist_ok=True, symlinks=True)
        _fill(folder, free_bytes)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
        folder.rmdir()
        os.replace(staged, folder)


def _fill(folder: Path, free_bytes: int) -> None:
    filler = folder / ".filler"
    with filler.open("wb") as out:
        while shutil.disk_usage(folder).free > free_bytes:
            try:
                out.write(b"\0" * min(1 << 20, max(512, shutil.disk_usage(folder).free // 2)))
                out.flush()
            except OSError:
                break


def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` read-only: a read-only bind mount for root, else no write permission."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield folder
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if not can_mount():
        pytest.skip("root without mount rights cannot make a read-only folder")
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


# --------------------------------------------------------------------------------------------
# the cases


@dataclass
class Case:
    """One bad input: `build(world, tmp)` makes it under `tmp` and returns the command's
    arguments (or a context manager yielding them); the message must contain every `expect`."""

    name: str
    build: Callable[[World, Path], list[str] | contextlib.AbstractContextManager]
    expect: tuple[str, ...]
    usage: bool = False  # a usage error, reported by click: the usage line and one error box
    may_change: tuple[str, ...] = ()  # files the command may rewrite before it fails
    marks: tuple = field(default_factory=tuple)


CASES: list[Case] = []


def case(name: str, *expect: str, **options: Any) -> Callable:
    def register(build: Callable) -> Callable:
        CASES.append(Case(name, build, expect, **options))
        return build

    return register


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def stage_file(world: World, tmp: Path, text: str) -> str:
    """A stage file beside the world's (so `model: small` and `../data/small.yaml` resolve)."""
    params = world.copy_params(tmp)
    return str(write(params / "stages" / "bad.yaml", text))


def check(path: str, *more: str) -> list[str]:
    return ["params", "check", path, *more]


# ---- params files ---------------------------------------------------------------------------

DATA_TEXT = "tokenizer: {kind: train, vocab_size: 300}\nseq_len: 8\n"
WITH_HUB = "tokenizer: {kind: hub}\nseq_len: 8\nsources: {x: {kind: demo, domain: e, corpus: c}}\n"
# (case, file written under a copy of the world's params/, its text, what the message names)
PARAMS_FILES: list[tuple[str, str, str | bytes, tuple[str, ...]]] = [
    ("binary file", "stages/bad.yaml", bytes(range(256)), ("bad.yaml: not a text file", "YAML")),
    ("NUL byte in the text", "stages/bad.yaml", "name: a\0b\n", ("bad.yaml: malformed YAML",)),
    ("empty file", "stages/bad.yaml", "", ("bad.yaml: file is empty", "expected a mapping")),
    ("a list at the top", "stages/bad.yaml", "- a\n", ("bad.yaml: expected a mapping", "list")),
    ("unclosed bracket", "stages/bad.yaml", "mixture: {a: 1\n", ("bad.yaml: malformed", "line 1")),
    ("tab indentation", "stages/bad.yaml", "optim:\n\tlr: 1\n", ("bad.yaml: malformed YAML",)),
    ("duplicate key", "stages/bad.yaml", "name: a\nname: b\n", ("duplicate key 'name'",)),
    ("unknown top-level key", "stages/bad.yaml", STAGE.replace("max_tokens:", "max_tokenz:"),
     ("bad.yaml", "max_tokenz: unknown key", "allowed keys:")),
    ("unknown nested key", "stages/bad.yaml", STAGE.replace("{lr:", "{lrr:"),
     ("optim.lrr: unknown key", "allowed keys: lr")),
    ("text where a number goes", "stages/bad.yaml", STAGE.replace(" 2048", " lots"),
     ("max_tokens = 'lots'", "integer")),
    ("negative learning rate", "stages/bad.yaml", STAGE.replace("lr: 1.0e-2", "lr: -1"),
     ("optim.lr = -1", "greater than 0")),
    ("required key missing", "data/bad.yaml", "tokenizer: {kind: train, vocab_size: 300}\n"
     "sources: {x: {kind: demo, domain: e, corpus: c}}\n", ("seq_len: required key is missing",)),
    ("a word where a boolean goes", "data/bad.yaml", DATA_TEXT + "add_bos: maybe\n"
     "sources: {x: {kind: demo, domain: e, corpus: c}}\n", ("1 invalid", "add_bos = 'maybe'")),
    ("extends a missing file", "stages/bad.yaml", "extends: gone.yaml\n",
     ("extends = 'gone.yaml': file not found",)),
    ("extends itself", "stages/bad.yaml", "extends: bad.yaml\n", ("extends: cycle",)),
    ("extends is not a path", "stages/bad.yaml", "extends: 3\n", ("extends = 3: must be a path",)),
    ("model preset that does not exist", "stages/bad.yaml", STAGE.replace("l: small", "l: huge"),
     ("model = 'huge'", "referenced file not found", "params/models/")),
    ("referenced model file is binary", "models/small.yaml", b"\xff\xfe\x00binary",
     ("small.yaml: not a text file",)),
    ("trained tokenizer without vocab_size", "data/bad.yaml", DATA_TEXT.replace(
        ", vocab_size: 300", "") + "sources: {x: {kind: demo, domain: e, corpus: c}}\n",
     ("tokenizer", "needs vocab_size")),
    ("vocab_size too small", "data/bad.yaml", DATA_TEXT.replace("300", "100")
     + "sources: {x: {kind: demo, domain: e, corpus: c}}\n", ("vocab_size must be at least 260",)),
    ("hub tokenizer without a name", "data/bad.yaml", WITH_HUB, ("'hub' needs name_or_path",)),
    ("validation_fraction out of range", "data/bad.yaml", WITH_HUB.replace(
        "{kind: hub}", "{kind: hub, name_or_path: x}") + "validation_fraction: 0.7\n",
     ("validation_fraction = 0.7", "less than 0.5")),
    ("unknown source kind", "data/bad.yaml", DATA_TEXT + "sources: {x: {kind: ftp, domain: e}}\n",
     ("sources.x", "'ftp'", "'hub', 'local', 'demo'")),
    ("local source without paths", "data/bad.yaml",
     DATA_TEXT + "sources: {x: {kind: local, domain: e, paths: []}}\n",
     ("sources.x.local.paths = []", "at least 1 item")),
    ("no sources", "data/bad.yaml", DATA_TEXT + "sources: {}\n", ("sources = {}", "at least 1")),
    ("heads do not divide the width", "models/bad.yaml", json.dumps(MODEL).replace(
        '"num_attention_heads": 4', '"num_attention_heads": 5'), ("bad.yaml", "hidden_size")),
    ("eval task without a name", "eval/bad.yaml", "tasks: [{metric: acc}]\n",
     ("tasks.0.name: required key is missing",)),
    ("eval suite that does not exist", "eval/bad.yaml", "suites: [klingon]\n",
     ("suites.0 = 'klingon'", "'bigbench'")),
    ("pipeline without steps", "pipelines/bad.yaml", "name: p\n", ("steps: required key",)),
    ("fused projections with fp8", "stages/bad.yaml", STAGE.replace("{precision: fp32}",
     "{precision: fp8, fused_projections: [qkv]}"),
     ("parallel.fused_projections = ['qkv']", "precision: fp8")),
    ("fused projections under LoRA", "stages/bad.yaml", STAGE.replace("{precision: fp32}",
     "{fused_projections: [gate_up]}") + "init_from: {stage: a, carry: [weights]}\nadapter: lora\n",
     ("fused_projections = ['gate_up']", "LoRA adapter on gate_proj, up_proj")),
]  # fmt: skip


def _params_case(name: str, relative: str, text: str | bytes, expect: tuple[str, ...]) -> None:
    def build(w: World, tmp: Path) -> list[str]:
        params = w.copy_params(tmp)
        write(params / relative, text)
        referenced = relative.endswith("/small.yaml")  # read through the stage that names it
        return check(str(params / ("stages/base.yaml" if referenced else relative)))

    CASES.append(Case(f"params: {name}", build, expect))


for _row in PARAMS_FILES:
    _params_case(*_row)


@case("params: file missing", "nope.yaml: file not found")
def _(w: World, tmp: Path) -> list[str]:
    return check(str(tmp / "params" / "stages" / "nope.yaml"))


@case("params: a folder given as the file", "is a folder", "give a params .yaml file")
def _(w: World, tmp: Path) -> list[str]:
    (tmp / "params" / "stages").mkdir(parents=True)
    return check(str(tmp / "params" / "stages"), "--kind", "stages")


@case("params: invalid referenced data file", "small.yaml", "seq_len = 0", "greater than 0")
def _(w: World, tmp: Path) -> list[str]:
    path = stage_file(w, tmp, STAGE)
    data = tmp / "params" / "data" / "small.yaml"
    data.write_text(data.read_text().replace('"seq_len": 32', '"seq_len": 0'))
    return check(path)


@case("params: file outside params/ without --kind", "cannot tell what kind", "--kind")
def _(w: World, tmp: Path) -> list[str]:
    return check(str(write(tmp / "stage.yaml", STAGE)))


@case("params: unknown --kind", "--kind 'stagez'", "allowed: ")
def _(w: World, tmp: Path) -> list[str]:
    return check(str(write(tmp / "stage.yaml", STAGE)), "--kind", "stagez")


@case("params: one bad file among good ones", "bad.yaml", "optim.lr = 'fast'")
def _(w: World, tmp: Path) -> list[str]:
    bad = stage_file(w, tmp, STAGE.replace("lr: 1.0e-2", "lr: fast"))
    return ["params", "check", w.stage(), bad, str(w.params / "eval" / "ppl.yaml")]


@case("params: an unknown checkpoint mode", "checkpoint.mode = 'later'", "'async' or 'sync'")
def _(w: World, tmp: Path) -> list[str]:
    return check(stage_file(w, tmp, STAGE.replace("keep_last: 2}", "keep_last: 2, mode: later}")))


@case("params show: unknown key", "optim.lrr: unknown key")
def _(w: World, tmp: Path) -> list[str]:
    return ["params", "show", stage_file(w, tmp, STAGE.replace("optim: {lr:", "optim: {lrr:"))]


# ---- --set overrides --------------------------------------------------------------------------

# (case, the override, what the message names)
OVERRIDES = [
    ("without =", "optim.lr", ("--set 'optim.lr'", "expected key.path=value")),
    ("with an empty key part", "optim..lr=1", ("--set 'optim..lr=1'", "expected key.path")),
    ("with malformed YAML", "optim.lr=[1", ("--set 'optim.lr=[1'", "malformed YAML")),
    ("into a number", "optim.lr.x=1", ("--set optim.lr.x", "'lr' holds 0.01, not a mapping")),
    ("an unknown key", "optim.beta=1", ("with --set optim.beta=1", "optim.beta: unknown key")),
    ("a reference to a missing model", "model=huge", ("model = 'huge'", "params/models/")),
]


def _override_case(name: str, override: str, expect: tuple[str, ...]) -> None:
    CASES.append(Case(f"params: --set {name}", lambda w, tmp: check(w.stage(), "--set", override),
                      expect))  # fmt: skip


for _row in OVERRIDES:
    _override_case(*_row)


# ---- the command line -----------------------------------------------------------------------


@case("cli: unknown model preset", "'nope'", "presets")
def _(w: World, tmp: Path) -> list[str]:
    return ["model", "info", "nope"]


@case("cli: run a pipeline that does not exist", "nope.yaml: file not found")
def _(w: World, tmp: Path) -> list[str]:
    return ["run", str(tmp / "params" / "pipelines" / "nope.yaml")]


@case("cli: run --from a step that does not exist", "--from 'nope': no such step")
def _(w: World, tmp: Path) -> list[str]:
    pipeline = "name: p\nsteps:\n  - {name: prepare, notebook: 01_prepare_data}\n"
    path = write(tmp / "params" / "pipelines" / "p.yaml", pipeline)
    return ["run", str(path), "--from", "nope", "--run-id", str(tmp / "run")]


@case("cli: a counterfactual of a stage not in the pipeline (plan)", "cf.yaml: counterfactual.of "
      "= 'nope'", "no stage 'nope' in pipeline p", "its stages: base, cf")  # fmt: skip
def _(w: World, tmp: Path) -> list[str]:
    params = w.copy_params(tmp)
    cf = write(params / "stages" / "cf.yaml", "extends: base.yaml\nname: cf\n"
               "counterfactual: {of: nope, changes: nothing}\n")  # fmt: skip
    steps = "".join(
        f"  - {{name: {name}, notebook: 02_train_stage, params: {{stage_params: {path}}}}}\n"
        for name, path in (("base", params / "stages" / "base.yaml"), ("cf", cf))
    )
    path = write(params / "pipelines" / "p.yaml", f"name: p\nsteps:\n{steps}")
    return ["run", str(path), "--dry-run"]


@case(
    "cli: run a counterfactual without its original",
    "continual-mathcode-noramp.yaml: counterfactual.of = 'continual-mathcode'",
    "no stage 'continual-mathcode' in pipeline p",
)
def _(w: World, tmp: Path) -> list[str]:
    step = "{name: noramp, notebook: 02_train_stage, params: {stage_params: %s}}"
    pipeline = "name: p\nsteps:\n  - " + step % "params/stages/demo/continual-mathcode-noramp.yaml"
    path = write(tmp / "params" / "pipelines" / "p.yaml", pipeline + "\n")
    return ["run", str(path), "--run-id", str(tmp / "run")]


@case("cli: report on a folder that is no run", "not a run folder")
def _(w: World, tmp: Path) -> list[str]:
    return ["report", str(tmp)]


@case(
    "cli: report on a run whose resolved.yaml this version cannot read",
    "resolved.yaml",
    "parallel.liger",
    "expected a list of ops",
)
def _(w: World, tmp: Path) -> list[str]:
    run = w.copy_run(tmp)
    resolved = run / "stages" / "base" / "resolved.yaml"
    text = resolved.read_text()
    resolved.write_text(text.replace("liger: []", "liger: 'off'"))  # as tinylab wrote it once
    assert resolved.read_text() != text
    return ["report", str(run)]


@case("cli: compare one run", "give at least 2 run folders")
def _(w: World, tmp: Path) -> list[str]:
    return ["compare", str(w.run), "--out", str(tmp / "compare")]


@case("cli: compare with a folder that is no run", "not a run folder; expected a run folder")
def _(w: World, tmp: Path) -> list[str]:
    return ["compare", str(w.run), str(tmp), "--out", str(tmp / "compare")]


@case("cli: compare a run with itself", "given twice")
def _(w: World, tmp: Path) -> list[str]:
    return ["compare", str(w.run), str(w.run), "--out", str(tmp / "compare")]


@case("cli: compare runs with no stage in common", "no stage in common", "other: renamed")
def _(w: World, tmp: Path) -> list[str]:
    other = w.copy_run(tmp).rename(tmp / "other")
    (other / "stages" / "base").rename(other / "stages" / "renamed")
    return ["compare", str(w.run), str(other), "--out", str(tmp / "compare")]


@case("cli: status of a folder that is no run", "status-of: no manifest.json", "run folder")
def _(w: World, tmp: Path) -> list[str]:
    (tmp / "status-of").mkdir()
    return ["status", str(tmp / "status-of")]


@case("cli: eval on a folder without config.json", "not an HF model folder (no config.json)")
def _(w: World, tmp: Path) -> list[str]:
    return ["eval", str(tmp), "--params", str(w.params / "eval" / "ppl.yaml"), "--out", str(tmp)]


@case("cli: eval with a bad params file", "bad.yaml", "limit = 0")
def _(w: World, tmp: Path) -> list[str]:
    bad = write(tmp / "params" / "eval" / "bad.yaml", "limit: 0\n")
    return ["eval", str(w.hf), "--params", str(bad), "--out", str(tmp / "eval")]


@case("cli: train without prepared data", "no prepared data")
def _(w: World, tmp: Path) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(tmp / "run")]


@case("cli: train with a batch that does not divide", "world_size = 4 x 32 x 3")
def _(w: World, tmp: Path) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(w.copy_run(tmp)), "--nproc", "3"]


@case("cli: train --nproc 0", "--nproc 0", ">= 1")
def _(w: World, tmp: Path) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(w.copy_run(tmp)), "--nproc", "0"]


@case("cli: train with a bad --set", "--set optim.lr=-3", "optim.lr = -3")
def _(w: World, tmp: Path) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(w.copy_run(tmp)), "--set", "optim.lr=-3"]


@case("cli: train on FlashAttention-4 where it cannot run", "attention = 'flash_attention_4'",
      "attention: sdpa")  # fmt: skip
def _(w: World, tmp: Path) -> list[str]:  # no CUDA (CI), or no flash-attn-4 on a GPU machine
    run = w.copy_run(tmp)
    return ["train", w.stage(), "--run-dir", str(run), "--set", "model.attention=flash_attention_4"]


@case("cli: prepare a data file that does not exist", "nope.yaml: file not found")
def _(w: World, tmp: Path) -> list[str]:
    return ["prepare", str(tmp / "params" / "data" / "nope.yaml"), "--out", str(tmp / "data")]


@case("cli: submit with an unknown cluster profile", "'nope'", "params/clusters/")
def _(w: World, tmp: Path) -> list[str]:
    pipeline = "name: p\nsteps:\n  - {name: prepare, notebook: 01_prepare_data}\n"
    path = write(tmp / "params" / "pipelines" / "p.yaml", pipeline)
    return ["submit", str(path), "--cluster", "nope", "--dry-run"]


# ---- data: prepare ---------------------------------------------------------------------------


def data_file(w: World, tmp: Path, **changes: object) -> str:
    data = deep_merge(json.loads((w.params / "data" / "small.yaml").read_text()), changes)
    return str(write(tmp / "params" / "data" / "small.yaml", json.dumps(data)))


def prepare_args(data: str, out: Path) -> list[str]:
    return ["prepare", data, "--out", str(out), "--no-progress"]


@case("data: a local glob that matches nothing", "sources.code.paths", "matches no file")
def _(w: World, tmp: Path) -> list[str]:
    data = data_file(w, tmp, sources={"code": {"paths": [str(tmp / "none" / "*.jsonl")]}})
    return prepare_args(data, tmp / "data")


@case("data: a jsonl line that is no JSON", "sources.code", "bad.jsonl:2: not JSON")
def _(w: World, tmp: Path) -> list[str]:
    path = write(tmp / "bad.jsonl", '{"content": "ok"}\n{"content": \n')
    return prepare_args(data_file(w, tmp, sources={"code": {"paths": [str(path)]}}), tmp / "data")


@case("data: the text field is missing", "a.jsonl:1: text_field 'body' missing", "'content'")
def _(w: World, tmp: Path) -> list[str]:
    return prepare_args(data_file(w, tmp, sources={"code": {"text_field": "body"}}), tmp / "data")


@case("data: the text field is no string", "bad.jsonl:1: content is int", "expected a string")
def _(w: World, tmp: Path) -> list[str]:
    path = write(tmp / "bad.jsonl", '{"content": 3}\n')
    return prepare_args(data_file(w, tmp, sources={"code": {"paths": [str(path)]}}), tmp / "data")


@case("data: a file whose format is unknown", "sources.code", "'.csv'", "set format:")
def _(w: World, tmp: Path) -> list[str]:
    path = write(tmp / "a.csv", "x,y\n")
    return prepare_args(data_file(w, tmp, sources={"code": {"paths": [str(path)]}}), tmp / "data")


@case("data: an empty corpus", "sources.code: empty corpus")
def _(w: World, tmp: Path) -> list[str]:
    path = write(tmp / "empty.jsonl", "\n\n")
    return prepare_args(data_file(w, tmp, sources={"code": {"paths": [str(path)]}}), tmp / "data")


@case("data: a parquet file without the text column", "no.parquet", "'content' is not a column")
def _(w: World, tmp: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"]}), tmp / "no.parquet")
    source = {"paths": [str(tmp / "no.parquet")]}
    return prepare_args(data_file(w, tmp, sources={"code": source}), tmp / "data")


@case("data: a tokenizer folder that does not exist", "gone")
def _(w: World, tmp: Path) -> list[str]:
    tokenizer = {"kind": "path", "name_or_path": str(tmp / "gone")}
    return prepare_args(data_file(w, tmp, tokenizer=tokenizer), tmp / "data")


@case("data: --out is a file", "out.txt: cannot write the data folder", "another --out")
def _(w: World, tmp: Path) -> list[str]:
    return prepare_args(data_file(w, tmp), write(tmp / "out.txt", "a file"))


@case("data: prepare into a read-only folder", "cannot write the data folder", "another --out")
def _(w: World, tmp: Path):
    out = w.copy_data(tmp)
    return _within(read_only(out), prepare_args(data_file(w, tmp, seq_len=16), out))


@case("data: prepare onto a full disk", "No space left on device", "free space")
def _(w: World, tmp: Path):
    out = w.copy_data(tmp)
    return _within(full_disk(out), prepare_args(data_file(w, tmp, seq_len=16), out))


@contextlib.contextmanager
def _within(context: contextlib.AbstractContextManager, args: list[str]) -> Iterator[list[str]]:
    with context:
        yield args


# ---- data: a prepared folder that went bad ----------------------------------------------------


def shard(data: Path, pattern: str = "prose-train-*.bin") -> Path:
    return sorted((data / "shards").glob(pattern))[0]


def train_args(w: World, run: Path, *more: str) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(run), "--fresh", *more]


@case("data: a shard corrupted, same size", "prose-train-", "sha256 differs", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    path = shard(run / "data")
    path.write_bytes(b"\xff" * path.stat().st_size)
    return train_args(w, run)


@case("data: a shard truncated", "prose-train-", "truncated or overwritten", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    path = shard(run / "data")
    path.write_bytes(path.read_bytes()[:-7])
    return train_args(w, run)


@case("data: a shard missing", "prose-train-", "missing", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    shard(run / "data").unlink()
    return train_args(w, run)


@case("data: index.json is no JSON", "index.json: not valid JSON", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    write(run / "data" / INDEX_FILE, '{"format_version": 1,')
    return train_args(w, run)


@case("data: index.json of another format", "index.json: format_version is not 1", "prepare")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    write(run / "data" / INDEX_FILE, '{"format_version": 99}')
    return train_args(w, run)


@case("data: the tokenizer was swapped", "index.json: tokenizer_sha256", "another tokenizer")
def _(w: World, tmp: Path) -> list[str]:
    run = w.run_with_own_data(tmp)
    path = run / "data" / "tokenizer" / "tokenizer.json"
    path.write_text(path.read_text().replace('"<0x41>"', '"<0x4l>"'))
    return train_args(w, run)


@case("data: the mixture names a source the data lacks", "mixture", "'poetry'")
def _(w: World, tmp: Path) -> list[str]:
    return train_args(w, w.copy_run(tmp), "--set", "mixture={poetry: 1.0}")


@case("data: all mixture weights zero", "mixture", "must not all be zero")
def _(w: World, tmp: Path) -> list[str]:
    return train_args(w, w.copy_run(tmp), "--set", "mixture={prose: 0.0}")


@case("data: eval perplexity on corrupted data", "sha256 differs", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    data = w.copy_data(tmp)
    path = shard(data, "prose-val-*.bin")
    path.write_bytes(b"\xff" * path.stat().st_size)
    ppl = str(w.params / "eval" / "ppl.yaml")
    hf = str(w.run / "stages" / "base" / "hf")
    return ["eval", hf, "--params", ppl, "--out", str(tmp / "eval"), "--data-dir", str(data)]


@case("data: eval --data-dir that was never prepared", "no data index", "tinylab prepare")
def _(w: World, tmp: Path) -> list[str]:
    ppl = str(w.params / "eval" / "ppl.yaml")
    hf = str(w.run / "stages" / "base" / "hf")
    return ["eval", hf, "--params", ppl, "--out", str(tmp / "eval"), "--data-dir", str(tmp)]


# ---- usage errors (click's one message: the usage line, then the error box) -------------------


@case("usage: a required option missing", "Missing option '--out'", usage=True)
def _(w: World, tmp: Path) -> list[str]:
    return ["prepare", str(w.params / "data" / "small.yaml")]


@case("usage: a number option given text", "Invalid value for '--nproc'", usage=True)
def _(w: World, tmp: Path) -> list[str]:
    return ["train", w.stage(), "--run-dir", str(tmp), "--nproc", "two"]


@case("usage: a misspelt command", "No such command 'trian'", "Did you mean 'train'", usage=True)
def _(w: World, tmp: Path) -> list[str]:
    return ["trian", w.stage()]


@case("usage: an unknown option", "No such option: --sett", usage=True)
def _(w: World, tmp: Path) -> list[str]:
    return ["params", "show", w.stage(), "--sett", "optim.lr=1"]


# ---- evaluation inputs ----------------------------------------------------------------------


def eval_args(w: World, hf: Path, out: Path, *more: str) -> list[str]:
    ppl = str(w.params / "eval" / "ppl.yaml")
    return ["eval", str(hf), "--params", ppl, "--out", str(out), "--data-dir", str(w.data), *more]


def copy_hf(w: World, tmp: Path) -> Path:
    return Path(shutil.copytree(w.run / "stages" / "base" / "hf", tmp / "hf"))


@case("eval: a model folder without safetensors", "hf: no *.safetensors weights", "rerun")
def _(w: World, tmp: Path) -> list[str]:
    hf = copy_hf(w, tmp)
    (hf / "model.safetensors").unlink()
    return eval_args(w, hf, tmp / "eval")


@case("eval: a truncated safetensors file", "model.safetensors: unreadable", "rerun")
def _(w: World, tmp: Path) -> list[str]:
    hf = copy_hf(w, tmp)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return eval_args(w, hf, tmp / "eval")


@case("eval: config.json that is no JSON", "config.json: unreadable", "rerun")
def _(w: World, tmp: Path) -> list[str]:
    hf = copy_hf(w, tmp)
    write(hf / "config.json", "{not json")
    return eval_args(w, hf, tmp / "eval")


@case("eval: a model of another tokenizer than the data", "tokenizer")
def _(w: World, tmp: Path) -> list[str]:
    return eval_args(w, w.hf, tmp / "eval")


@case("eval: --out inside a read-only folder", "Read-only file system", "make it writable")
def _(w: World, tmp: Path):
    (tmp / "out").mkdir()
    hf = w.run / "stages" / "base" / "hf"
    return _within(read_only(tmp / "out"), eval_args(w, hf, tmp / "out" / "eval"))


@case("eval: --out on a full disk", "No space left on device", "free space")
def _(w: World, tmp: Path):
    (tmp / "out").mkdir()
    hf = w.run / "stages" / "base" / "hf"
    return _within(full_disk(tmp / "out", free_bytes=0), eval_args(w, hf, tmp / "out" / "eval"))


# ---- checkpoints and resuming -----------------------------------------------------------------


def resume_args(w: World, run: Path, *more: str) -> list[str]:
    """Resume the trained stage for one more step (max_tokens is no part of the recipe)."""
    return ["train", w.stage(), "--run-dir", str(run), "--set", "max_tokens=3072", *more]


def checkpoints(run: Path) -> list[Path]:
    return sorted((run / "stages" / "base" / "checkpoints").glob("step-*"))


@case("checkpoint: resume with another learning rate", "optim changed", "--fresh")
def _(w: World, tmp: Path) -> list[str]:
    return resume_args(w, w.copy_run(tmp), "--set", "optim.lr=5e-3")


@case("checkpoint: resume with another model shape", "num_hidden_layers: 2 in the", "--fresh")
def _(w: World, tmp: Path) -> list[str]:
    return resume_args(w, w.copy_run(tmp), "--set", "model.num_hidden_layers=3")


@case("checkpoint: every meta.json corrupt", "meta.json")
def _(w: World, tmp: Path) -> list[str]:
    run = w.copy_run(tmp)
    for folder in checkpoints(run):
        write(folder / "meta.json", "{not json")
    return resume_args(w, run)


@case("checkpoint: every checkpoint truncated", "step-0000000")
def _(w: World, tmp: Path) -> list[str]:
    run = w.copy_run(tmp)
    for folder in checkpoints(run):
        shard = folder / "__0_0.distcp"
        shard.write_bytes(shard.read_bytes()[:100])
    return resume_args(w, run)


@case("checkpoint: a child stage whose parent never ran", "init_from", "train stage 'base'")
def _(w: World, tmp: Path) -> list[str]:
    params = w.copy_params(tmp)
    child = write(params / "stages" / "child.yaml", "extends: base.yaml\nname: child\n"
                  "init_from: {stage: base}\n")  # fmt: skip
    run = tmp / "run"
    run.mkdir()
    (run / "data").symlink_to(w.data)
    return ["train", str(child), "--run-dir", str(run)]


@case("train: a read-only run folder", "Read-only file system", "make it writable")
def _(w: World, tmp: Path):
    run = w.copy_run(tmp)
    return _within(read_only(run), resume_args(w, run))


# resuming with a larger max_tokens records the new params and the step's metrics, and the
# stage is no longer finished, before the save of its next checkpoint fails
@case("train: a full disk during a checkpoint save", "checkpoints", "no space left", "Free space",
      may_change=("resolved.yaml", "metrics.jsonl", "result.json"))  # fmt: skip
def _(w: World, tmp: Path):
    run = w.copy_run(tmp)
    return _within(full_disk(run, free_bytes=0), resume_args(w, run))


@case("train: the loss diverges", "optim.lr", "tinylab train")
def _(w: World, tmp: Path) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    (run / "data").symlink_to(w.data)
    return ["train", w.stage(), "--run-dir", str(run), "--set", "optim.lr=1e30",
            "--set", "optim.min_lr=1e29"]  # fmt: skip


# ---- concurrent runs ------------------------------------------------------------------------

HOLD = """
import fcntl, json, os, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0)
handle.truncate()
record = {"pid": os.getpid(), "host": "here", "since": "now", "command": ["tinylab"]}
handle.write(json.dumps(record))
handle.flush()
print("held", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def lock_held(path: Path, args: list[str]) -> Iterator[list[str]]:
    """`path` flock-ed by another live process (as a running `tinylab` holds it) while the
    command runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield args
    finally:
        holder.kill()
        holder.wait()


@case("concurrent: a second training of the same stage", "in use", "pid")
def _(w: World, tmp: Path):
    run = w.copy_run(tmp)
    return lock_held(run / "stages" / "base" / ".lock", resume_args(w, run))


@case("concurrent: a second --fresh training of the same stage", "in use", "pid")
def _(w: World, tmp: Path):
    run = w.copy_run(tmp)
    return lock_held(run / "stages" / "base" / ".lock", train_args(w, run))


@case("concurrent: a second run of the same pipeline", "in use", "pid")
def _(w: World, tmp: Path):
    data = w.params / "data" / "small.yaml"
    step = f"{{name: prepare, notebook: 01_prepare_data, params: {{data_params: {data}}}}}"
    path = write(tmp / "params" / "pipelines" / "p.yaml", f"name: p\nsteps:\n  - {step}\n")
    run = tmp / "runs" / "p"
    return lock_held(run / ".run.lock", ["run", str(path), "--run-id", str(run)])


# --------------------------------------------------------------------------------------------
# the test


@pytest.mark.parametrize(
    "bad", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES]
)  # fmt: skip
def test_bad_input_is_one_message_and_damages_nothing(bad: Case, world: World, tmp_path: Path):
    with _built(bad, world, tmp_path) as args:
        before = _snapshot(tmp_path)
        outcome = tinylab(*args)
        after = _snapshot(tmp_path)
    _record(bad.name, outcome, tmp_path, world)
    assert outcome.code == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    message = " ".join(outcome.stderr.split()) if bad.usage else outcome.message
    if bad.usage:
        assert outcome.stderr.startswith("Usage: ") and outcome.stderr.count("Error") == 1
    else:
        assert outcome.stderr.count("error: ") == 1 and message, outcome.stderr
    for text in bad.expect:
        assert text in message, f"{text!r} not in {message!r}"
    damaged = sorted(
        name
        for name, data in before.items()
        if after.get(name) != data
        and not name.endswith(".lock")  # a lock records its holder
        and Path(name).name not in bad.may_change
    )
    assert not damaged, f"changed or removed: {damaged}"


def _built(bad: Case, world: World, tmp: Path) -> contextlib.AbstractContextManager:
    """The case's bad input, made: a context manager yielding the command's arguments."""
    built = bad.build(world, tmp)
    return built if isinstance(built, contextlib.AbstractContextManager) else (
        contextlib.nullcontext(built))  # fmt: skip


@pytest.mark.parametrize("name", [
    "params: binary file", "cli: train without prepared data", "data: a shard truncated",
    "data: prepare into a read-only folder", "eval: --out on a full disk",
])  # fmt: skip
def test_debug_shows_the_traceback(name: str, world: World, tmp_path: Path) -> None:
    with _built(next(c for c in CASES if c.name == name), world, tmp_path) as args:
        outcome = tinylab("--debug", *args)
    assert outcome.code == 2 and outcome.message, outcome.stderr
    assert 0 <= outcome.stderr.find("Traceback") < outcome.stderr.find("error: ")


def _record(name: str, outcome: Outcome, tmp: Path, world: World) -> None:
    """The case's row in the table file, when one is asked for (paths shortened)."""
    path = os.environ.get(TABLE_ENV)
    if path:
        text = outcome.message or outcome.stderr.strip() or "(no message)"
        if outcome.stderr.startswith("Usage: "):  # click's box: the words in it
            box = outcome.stderr.split("Error", 1)[-1]
            text = "Usage error: " + " ".join(w for w in box.split() if w.strip("─│╭╮╰╯"))
        lines = text.splitlines()
        first = " ".join(lines[:2] if lines[0].endswith("invalid value(s)") else lines[:1])
        first = " ".join(first.split()).replace(str(tmp), "TMP").replace(str(world.root), "WORLD")
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps([name, outcome.code, first]) + "\n")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "table.jsonl"
        table.touch()
        os.environ[TABLE_ENV] = str(table)
        status = pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-k", "one_message"])
        rows = [json.loads(line) for line in table.read_text().splitlines()]
    print("\n| # | case | exit | message (first line) |\n|---|---|---|---|")
    for number, (name, code, first) in enumerate(rows, start=1):
        print(f"| {number} | {name} | {code} | {first.replace('|', '/')} |")
    sys.exit(status)
