"""tinylab submit against a real SLURM: munged, slurmctld and slurmd started here as one CPU node.

The fixture installs Debian's slurm-wlm packages when missing (root, apt-get; ~20 s), writes a
slurm.conf with everything under a temp folder (no systemd, no cgroups, no accounting), starts
the three daemons in the foreground as children of this process (~1 s to an idle node) and stops
them at the end. Skipped only when not root or without apt-get.

    python -m pytest -m slurm tests/test_slurm.py -v
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from _debian import apt_install

from tinylab.cluster.status import run_status
from tinylab.config.loader import PROJECT_ROOT
from tinylab.pipeline import run_pipeline

pytestmark = pytest.mark.slurm

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

SLURM_CONF = """\
ClusterName=tinylab
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits cred_expire + 1 s before it may start again (default 121 s)
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2,bf_interval=2
DependencyParameters=kill_invalid_depend
ReturnToService=2
KillWait=5
MinJobAge=900
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


# --------------------------------------------------------------------------------------------
# The local SLURM


def _install_slurm() -> None:
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    apt_install(PACKAGES, "SLURM")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as `slurmd -C` reports them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"CPUs=(\d+)", out).group(1))
    memory = int(re.search(r"RealMemory=(\d+)", out).group(1))
    return cpus, memory


def _wait_idle(root: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout
        if state.strip() == "idle":
            return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((root / "log").glob("*")))
    raise AssertionError(f"node not idle after {timeout_s} s (state {state.strip()!r}):\n{logs}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running one-node SLURM; SLURM_CONF points at it for the module's tests."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM runs its daemons as root; run the tests as root")
    started = time.monotonic()
    _install_slurm()
    installed = time.monotonic()
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o755)
    key = root / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    cpus, memory = _node_hardware()
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            root=root,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            cpus=cpus,
            memory=min(memory, 8192),
        )
    )
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    munge = root / "munge"
    commands = [
        [
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={munge}/munge.socket",
            f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log",
            f"--seed-file={munge}/munged.seed",
        ],  # fmt: skip
        ["slurmctld", "-D", "-i"],
        ["slurmd", "-D", "-N", "localhost"],
    ]
    daemons = []
    try:
        for command in commands:
            log = (root / "log" / f"{command[0]}.out").open("w")
            daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
            if command[0] == "munged":
                _wait_for(munge / "munge.socket", 10)
        _wait_idle(root, timeout_s=60)
        print(
            f"\nSLURM: install {installed - started:.1f} s, daemons to idle node "
            f"{time.monotonic() - installed:.1f} s ({cpus} CPUs)"
        )
        yield root
    finally:
        if daemons:
            _drain()
        for proc in reversed(daemons):
            proc.terminate()
        for proc in reversed(daemons):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf


def _drain(timeout_s: float = 30) -> None:
    """Cancel every job of this private cluster and wait for the queue to empty, so no job
    step outlives the daemons."""
    subprocess.run(["scancel", "--user=root"], capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=30)
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(0.5)


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# A small pipeline: a plain step, a resumable counter, a 2-process "training" step

PARAMS = 'run_dir: str = "."\noverrides: list = []\nname: str = "x"\nvalue: int = 0\n'

STEP = """\
from pathlib import Path
out = Path(run_dir) / f"{name}.txt"
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("a") as f:
    f.write(f"{value} {overrides}\\n")
"""

COUNT = """\
import json, time
from pathlib import Path
run = Path(run_dir)
ckpt = run / f"{name}.ckpt.json"
state = json.loads(ckpt.read_text()) if ckpt.exists() else {"i": 0, "total": 0}
with (run / f"{name}.starts").open("a") as f:
    f.write(f"{state['i']}\\n")
while state["i"] < steps:
    time.sleep(sleep_s)
    state = {"i": state["i"] + 1, "total": state["total"] + state["i"] + 1}
    tmp = ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(ckpt)
(run / f"{name}.txt").write_text(f"total {state['total']} after {state['i']} steps\\n")
"""

ALLREDUCE = """\
import os, sys
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
if dist.get_rank() == 0:
    with open(os.path.join(sys.argv[1], "dist.txt"), "w") as f:
        f.write(f"world {dist.get_world_size()} sum {value.item():.0f}\\n")
dist.destroy_process_group()
"""

TRAIN = f"""\
import subprocess, sys
from pathlib import Path
script = Path(run_dir) / "allreduce.py"
script.write_text({ALLREDUCE!r})
standalone = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
command = [*(launcher or standalone), str(script), run_dir]
print(" ".join(command))
subprocess.run(command, check=True)
"""


def _notebook(path: Path, params: str, source: str) -> None:
    cells = [
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Notebooks, a pipeline (notebooks by absolute path, so the CLI needs no notebooks folder)
    and a cluster profile extending params/clusters/local.yaml with a temp run root."""
    root = tmp_path_factory.mktemp("project")
    nbs = root / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "step.ipynb", PARAMS, STEP)
    _notebook(nbs / "count.ipynb", PARAMS + "steps: int = 3\nsleep_s: float = 0.0\n", COUNT)
    _notebook(nbs / "train.ipynb", PARAMS + 'stage: str = ""\nlauncher: list = []\n', TRAIN)
    pipelines = root / "params" / "pipelines"
    pipelines.mkdir(parents=True)
    pipeline = pipelines / "small.yaml"
    pipeline.write_text(
        "name: small\nsteps:\n"
        f"  - {{name: prepare, notebook: {nbs}/step.ipynb, params: {{name: prepare, value: 1}}}}\n"
        f"  - {{name: count, notebook: {nbs}/count.ipynb, after: [prepare],\n"
        "     params: {name: count, steps: 12, sleep_s: 0.5}}\n"
        f"  - {{name: side, notebook: {nbs}/step.ipynb, after: [prepare],\n"
        "     params: {name: side, value: 2}}\n"
        f"  - {{name: train, notebook: {nbs}/train.ipynb, after: [count, side],\n"
        "     params: {name: train, stage: params/stages/demo/base.yaml}}\n"
    )
    clusters = root / "params" / "clusters"
    clusters.mkdir()
    profile = clusters / "test.yaml"
    profile.write_text(
        f"extends: {PROJECT_ROOT}/params/clusters/local.yaml\nname: test\n"
        f"run_root: {root}/runs\nrdzv_port: {_free_port()}\n"
        f"setup: ['source {Path(sys.prefix)}/bin/activate']\n"
    )
    return {"root": root, "pipeline": pipeline, "profile": profile, "runs": root / "runs"}


@pytest.fixture(scope="module")
def reference(project: dict[str, Path]) -> Path:
    """The same pipeline through `tinylab run`'s function, for comparison."""
    run_pipeline(project["pipeline"], run_id="reference", runs_dir=project["root"] / "local")
    return project["root"] / "local" / "reference"


def _tinylab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("tinylab")
    done = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT
    )
    print(f"$ tinylab {' '.join(args)}\n{done.stdout}{done.stderr}")
    return done


def _submit(project: dict[str, Path], run_id: str) -> list[str]:
    done = _tinylab(
        "submit", str(project["pipeline"]), "--cluster", str(project["profile"]), "--run-id", run_id
    )
    assert done.returncode == 0, done.stderr
    return re.findall(r"submitted (\w+): job (\d+)", done.stdout)


def _wait_jobs(run_dir: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run_status(run_dir)
        states = [r["job_state"] for r in status["rows"] if r["job_id"]]
        if states and all(s in TERMINAL for s in states):
            return status
        time.sleep(1)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(run_dir.glob("cluster/logs/*")))
    raise AssertionError(f"jobs not finished after {timeout_s} s:\n{status}\n{logs}")


def _wait_checkpoint(run_dir: Path, at_least: int, timeout_s: float = 90) -> None:
    ckpt = run_dir / "count.ckpt.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ckpt.exists() and json.loads(ckpt.read_text())["i"] >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"{ckpt} did not reach {at_least} in {timeout_s} s")


def _outputs(run_dir: Path) -> dict[str, str]:
    """What the steps wrote (run-specific bookkeeping excluded)."""
    skip = {"manifest.json", ".manifest.lock", ".run.lock", "count.starts"}
    return {
        str(p.relative_to(run_dir)): p.read_text()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
        and p.name not in skip
        and not p.is_relative_to(run_dir / "cluster")
        and p.suffix != ".ipynb"
    }


def _assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    assert _outputs(run_dir) == _outputs(reference)
    assert _outputs(run_dir)["dist.txt"] == "world 2 sum 3\n"
    assert _outputs(run_dir)["count.txt"] == "total 78 after 12 steps\n"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s: r["status"] for s, r in manifest["steps"].items()} == dict.fromkeys(
        ["prepare", "count", "side", "train"], "done"
    )
    executed = (run_dir / "notebooks" / "train.ipynb").read_text()
    assert "srun --nodes=" in executed and "--rdzv-backend=c10d" in executed


def test_submit_requeue_cancel_resubmit_resumes_with_the_outputs_of_tinylab_run(
    slurm: Path, project: dict[str, Path], reference: Path
) -> None:
    started = time.monotonic()
    jobs = dict(_submit(project, "cluster"))
    assert list(jobs) == ["prepare", "count", "side", "train"]
    run_dir = project["runs"] / "cluster"
    # requeued mid-step (what the time-limit trap and preemption do): same job, resumes
    _wait_checkpoint(run_dir, at_least=2)
    subprocess.run(["scontrol", "requeue", jobs["count"]], check=True)
    _wait_starts(run_dir, 2)
    _wait_checkpoint(run_dir, at_least=5)
    _wait_state(run_dir, "side", "COMPLETED")  # the parallel branch
    # cancelled mid-step: the dependent job is cancelled too (kill_invalid_depend)
    subprocess.run(["scancel", jobs["count"]], check=True)
    status = _wait_jobs(run_dir, timeout_s=60)
    states = {r["step"]: (r["job_state"], r["restarts"]) for r in status["rows"]}
    assert states == {
        "prepare": ("COMPLETED", 0),
        "count": ("CANCELLED", 1),
        "side": ("COMPLETED", 0),
        "train": ("CANCELLED", 0),
    }
    # resubmitted: the finished step is skipped, the cancelled one resumes from its checkpoint
    again = dict(_submit(project, "cluster"))
    assert list(again) == ["count", "train"]
    _wait_jobs(run_dir, timeout_s=180)
    _tinylab("status", str(run_dir))
    starts = [int(s) for s in (run_dir / "count.starts").read_text().split()]
    assert len(starts) == 3 and starts[0] == 0 and 2 <= starts[1] <= starts[2], starts
    assert starts[2] >= 5
    _assert_same_as_reference(run_dir, reference)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["cluster"]["jobs"]["count"]
    assert record["job_id"] == again["count"] and record["previous_job_ids"] == [jobs["count"]]
    assert record["state"] == "COMPLETED"
    print(f"submit, requeue, scancel, resubmit, finish: {time.monotonic() - started:.1f} s")


def _wait_state(run_dir: Path, step: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = {r["step"]: r for r in run_status(run_dir)["rows"]}
        if rows[step]["job_state"] == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{step} not {state} after {timeout_s} s: {rows[step]}")


def _wait_starts(run_dir: Path, count: int, timeout_s: float = 60) -> None:
    path = run_dir / "count.starts"
    deadline = time.monotonic() + timeout_s
    while len(path.read_text().split()) < count:
        assert time.monotonic() < deadline, f"{path}: fewer than {count} starts in {timeout_s} s"
        time.sleep(0.2)


def test_resubmitting_a_queued_run_is_refused(slurm: Path, project: dict[str, Path]) -> None:
    jobs = dict(_submit(project, "twice"))
    try:
        done = _tinylab(
            "submit",
            str(project["pipeline"]),
            "--cluster",
            str(project["profile"]),
            "--run-id",
            "twice",
        )
        assert done.returncode == 2
        assert "still has jobs in the queue" in done.stderr
    finally:
        subprocess.run(["scancel", *jobs.values()], check=False)


# --------------------------------------------------------------------------------------------
# Real training: `python -m tinylab.train` on 2 processes (FSDP2, gloo) through srun + torchrun,
# requeued mid-stage, resumes exactly

TRAIN_STAGE = """\
import subprocess, sys
standalone = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
train = ["-m", "tinylab.train", "--config", config, "--run-dir", run_dir]
command = [*(launcher or standalone), *train]
print(" ".join(command))
subprocess.run(command, check=True)
"""


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory, project: dict[str, Path]) -> dict[str, Path]:
    """Prepared tiny data, a 40-step stage and a one-step pipeline that trains it. The step
    names params/stages/demo/base.yaml only so that tinylab treats it as a training step; what it
    trains is `config`, with the launcher it is given (what 02_train_stage does via train_stage)."""
    from _train_fixtures import prepare_data, stage_config

    from tinylab.config.loader import dump_config

    root = tmp_path_factory.mktemp("training")
    data = prepare_data(root)
    config = root / "stage.yaml"
    stage = stage_config(max_tokens=40 * 1024, checkpoint={"every_steps": 4, "keep_last": 2})
    config.write_text(dump_config(stage))
    notebook = project["root"] / "notebooks" / "train_stage.ipynb"
    _notebook(
        notebook, PARAMS + 'stage: str = ""\nconfig: str = ""\nlauncher: list = []\n', TRAIN_STAGE
    )
    pipeline = project["root"] / "params" / "pipelines" / "training.yaml"
    pipeline.write_text(
        f"name: training\nsteps:\n  - {{name: base, notebook: {notebook},\n"
        f"     params: {{stage: params/stages/demo/base.yaml, config: {config}}}}}\n"
    )
    return {"data": data, "pipeline": pipeline}


def _records(run_dir: Path) -> list[tuple]:
    lines = (run_dir / "stages" / "base" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    return [(r["step"], r["tokens"], r["loss"], r["lr"], r["grad_norm"]) for r in records]


def test_requeued_training_resumes_from_its_checkpoint_exactly(
    slurm: Path, project: dict[str, Path], training: dict[str, Path]
) -> None:
    started = time.monotonic()
    reference = project["root"] / "local" / "training"
    reference.mkdir(parents=True)
    (reference / "data").symlink_to(training["data"])
    run_pipeline(training["pipeline"], runs_dir=project["root"] / "local")
    run_dir = project["runs"] / "training"
    run_dir.mkdir(parents=True)
    (run_dir / "data").symlink_to(training["data"])
    done = _tinylab("submit", str(training["pipeline"]), "--cluster", str(project["profile"]))
    assert done.returncode == 0, done.stderr
    job = re.findall(r"submitted base: job (\d+)", done.stdout)[0]
    checkpoints = run_dir / "stages" / "base" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "step-00000008").is_dir():
        assert time.monotonic() < deadline, "no checkpoint at step 8 in 120 s"
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], check=True)
    status = _wait_jobs(run_dir, timeout_s=240)
    assert status["rows"][0]["job_state"] == "COMPLETED" and status["rows"][0]["restarts"] == 1
    log = next((run_dir / "cluster" / "logs").glob("base-*.out")).read_text()
    print("\n".join(line for line in log.splitlines() if re.search(r"tinylab\]|srun|resum", line)))
    assert "--rdzv-backend=c10d" in log and "resuming from step-0000000" in log
    assert [r[0] for r in _records(run_dir)] == list(range(1, 41))  # each step once
    assert _records(run_dir) == _records(reference)  # exact floats
    print(f"train, requeue, resume: {time.monotonic() - started:.1f} s")
