"""tinylab.cluster without a SLURM: profiles, rendered scripts, submission through fake sbatch
and scontrol commands, status, and bad input. The real SLURM is in tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tinylab.cluster.plan import load_profile, plan_jobs, run_dir_for
from tinylab.cluster.records import record_jobs
from tinylab.cluster.slurm import ClusterError, submit
from tinylab.cluster.status import format_status, run_status
from tinylab.config.cluster import ClusterConfig, JobResources
from tinylab.config.kinds import load_params
from tinylab.config.loader import PARAMS_DIR, ConfigError, load_config
from tinylab.layout import RunLayout
from tinylab.pipeline import plan_steps


def _notebook(path: Path, params: str) -> None:
    cells = [
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(run_dir)"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = kernel
    nbformat.write(nb, path)


PIPELINE = """\
name: tiny
steps:
  - {name: prepare, notebook: step, params: {name: prepare}}
  - {name: base, notebook: train, params: {stage: params/stages/demo/base.yaml}, after: [prepare]}
  - {name: report, notebook: step, params: {name: report}, after: [base]}
"""


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "step.ipynb", 'run_dir: str = "."\noverrides: list = []\nname: str = ""')
    _notebook(
        notebooks / "train.ipynb",
        'run_dir: str = "."\noverrides: list = []\nstage: str = ""\nlauncher: list = []',
    )
    _notebook(notebooks / "old_train.ipynb", 'run_dir: str = "."\nstage: str = ""')
    pipeline = tmp_path / "params" / "pipelines" / "tiny.yaml"
    pipeline.parent.mkdir(parents=True)
    pipeline.write_text(PIPELINE)
    return {"root": tmp_path, "notebooks": notebooks, "pipeline": pipeline}


def _profile(tmp_path: Path, **changes) -> ClusterConfig:
    profile = load_profile("2x8-h100")
    data = profile.model_dump(mode="json") | {"run_root": str(tmp_path / "runs")} | changes
    return ClusterConfig.model_validate(data)


def _plan(project: dict[str, Path], profile: ClusterConfig, **kwargs):
    return plan_jobs(project["pipeline"], profile, notebooks_dir=project["notebooks"], **kwargs)


# --------------------------------------------------------------------------------------------
# Rendering


def test_scripts_for_two_nodes_of_eight_gpus(project: dict[str, Path]) -> None:
    run_dir, jobs = _plan(project, _profile(project["root"]), overrides=["base.optim.lr=1e-3"])
    assert run_dir == project["root"] / "runs" / "tiny"
    assert [(j.name, j.depends_on, j.training) for j in jobs] == [
        ("prepare", [], False),
        ("base", ["prepare"], True),
        ("report", ["base"], False),
    ]
    prepare, base, report = (j.script for j in jobs)
    for line in (
        "#SBATCH --job-name=tiny.base",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=tinyllama",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=96",
        "#SBATCH --mem=0",
        "#SBATCH --time=2-00:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@600",
        "#SBATCH --open-mode=append",
        "#SBATCH --dependency=afterok:<job id of prepare>",
        "#SBATCH --kill-on-invalid-dep=yes",
        f"#SBATCH --output={run_dir}/cluster/logs/base-%j.out",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "export MASTER_PORT=$((29500 + SLURM_JOB_ID % 10000))",
        "module load cuda/12.4",
        "source .venv/bin/activate",
        "trap requeue_before_limit USR1",
    ):
        assert line in base.splitlines(), line
    launcher = next(line for line in base.splitlines() if line.startswith("LAUNCHER="))
    for piece in (
        "srun --nodes=$SLURM_JOB_NUM_NODES --ntasks-per-node=1 --cpus-per-task=96",
        "python -m torch.distributed.run --nnodes=$SLURM_JOB_NUM_NODES --nproc-per-node=8",
        "--rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT --rdzv-id=$SLURM_JOB_ID",
    ):
        assert piece in launcher
    assert '--launcher "$LAUNCHER"' in base
    assert "--set base.optim.lr=1e-3" in base
    assert "--step base" in base and f"--notebooks-dir {project['notebooks']}" in base
    # other steps: one node, no torchrun, their own resources
    assert "LAUNCHER" not in prepare and "srun" not in report
    assert "#SBATCH --cpus-per-task=64" in prepare and "#SBATCH --mem=256G" in prepare
    assert "#SBATCH --gpus-per-node=1" in report and "#SBATCH --time=12:00:00" in report
    assert "#SBATCH --dependency" not in prepare
    assert "#SBATCH --dependency=afterok:<job id of base>" in report


def test_scripts_are_valid_bash_with_sbatch_lines_first(project: dict[str, Path]) -> None:
    _, jobs = _plan(project, _profile(project["root"]))
    for job in jobs:
        subprocess.run(["bash", "-n"], input=job.script, text=True, check=True)
        lines = job.script.splitlines()
        first_command = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        assert all(not line.startswith("#SBATCH") for line in lines[first_command:])


def test_fingerprint_in_the_script_is_the_plans(project: dict[str, Path]) -> None:
    profile = _profile(project["root"])
    run_dir, jobs = _plan(project, profile)
    pipeline = load_params(project["pipeline"])
    plan = plan_steps(pipeline, run_dir, notebooks_dir=project["notebooks"])
    for job in jobs:
        assert f"--fingerprint {plan[job.name].fingerprint}" in job.script


def test_one_process_training_needs_no_launcher(project: dict[str, Path]) -> None:
    single = {"nodes": 1, "gpus_per_node": 1, "time": "10"}
    _, jobs = _plan(project, _profile(project["root"], train=single, requeue=False))
    base = jobs[1].script
    assert "LAUNCHER" not in base and "MASTER_ADDR" not in base
    assert "#SBATCH --requeue" not in base and "trap requeue_before_limit" not in base


def test_done_steps_are_not_submitted_again(project: dict[str, Path]) -> None:
    profile = _profile(project["root"])
    run_dir, _ = _plan(project, profile)
    pipeline = load_params(project["pipeline"])
    plan = plan_steps(pipeline, run_dir, notebooks_dir=project["notebooks"])
    run_dir.mkdir(parents=True)
    steps = {"prepare": {"status": "done", "fingerprint": plan["prepare"].fingerprint}}
    RunLayout(run_dir).manifest.write_text(json.dumps({"steps": steps}))
    _, jobs = _plan(project, profile)
    assert [(j.name, j.depends_on) for j in jobs] == [("base", []), ("report", ["base"])]
    steps["report"] = {"status": "done", "fingerprint": plan["report"].fingerprint}
    RunLayout(run_dir).manifest.write_text(json.dumps({"steps": steps}))
    _, jobs = _plan(project, profile)  # report is done, but it comes after base, which runs
    assert [j.name for j in jobs] == ["base", "report"]


def test_jobs_wait_for_the_steps_they_run_after(project: dict[str, Path]) -> None:
    project["pipeline"].write_text(
        "name: fan\nsteps:\n"
        "  - {name: a, notebook: step}\n"
        "  - {name: b, notebook: step, after: [a]}\n"
        "  - {name: c, notebook: step, after: [a]}\n"
        "  - {name: d, notebook: step, after: [b, c]}\n"
        "  - {name: e, notebook: step}\n"
    )
    _, jobs = _plan(project, _profile(project["root"]))
    assert {j.name: j.depends_on for j in jobs} == {
        "a": [],
        "b": ["a"],
        "c": ["a"],
        "d": ["b", "c"],
        "e": [],
    }
    d = next(j for j in jobs if j.name == "d").script
    assert "#SBATCH --dependency=afterok:<job id of b>:<job id of c>" in d


def test_manifest_writers_merge_instead_of_overwriting(project: dict[str, Path]) -> None:
    """A job's step records and the cluster section written meanwhile by another process (a
    parallel step's job, tinylab status) both survive."""
    from tinylab.pipeline import execute_step, manifest_lock, open_manifest

    profile = _profile(project["root"])
    run_dir = run_dir_for(profile, "merge")
    pipeline = load_params(project["pipeline"])
    plan = plan_steps(pipeline, run_dir, notebooks_dir=project["notebooks"])
    manifest = open_manifest(run_dir, project["pipeline"], pipeline)  # this job's copy
    with manifest_lock(run_dir):  # meanwhile, elsewhere
        record_jobs(run_dir, {"report": {"job_id": "9", "state": "PENDING"}})
    execute_step(plan["prepare"], run_dir, manifest)
    on_disk = json.loads(RunLayout(run_dir).manifest.read_text())
    assert on_disk["steps"]["prepare"]["status"] == "done"
    assert on_disk["cluster"]["jobs"]["report"] == {"job_id": "9", "state": "PENDING"}


@pytest.mark.parametrize(
    "pipeline", sorted((PARAMS_DIR / "pipelines").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_pipeline_renders_on_the_two_node_profile(pipeline: Path, tmp_path: Path) -> None:
    _, jobs = plan_jobs(pipeline, _profile(tmp_path))
    assert jobs
    for job in jobs:
        subprocess.run(["bash", "-n"], input=job.script, text=True, check=True)
        if job.training:
            assert "--nnodes=$SLURM_JOB_NUM_NODES --nproc-per-node=8" in job.script


# --------------------------------------------------------------------------------------------
# Bad input


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no such profile .* profiles: .*2x8-h100.*local"):
        load_profile("nope")


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("train: {nodes: 0}", ["train.nodes", "greater than 0"]),
        ("train: {nodes: -2}", ["train.nodes", "greater than 0"]),
        ("train: {time: two days}", ["train.time", "expected a SLURM time"]),
        ("other: {nodes: 2}", ["other", "only training steps run on several nodes"]),
        ("sbatch_options: [exclusive]", ["sbatch_options", "one sbatch option"]),
        ("rdzv_port: 80", ["rdzv_port", "greater than or equal to 1024"]),
        ("train: {time: '4'}", ["grace_s (300 s) must be shorter", "train (4)"]),
        ("train: {gpus: 8}", ["train.gpus", "unknown key", "gpus_per_node"]),
    ],
)
def test_bad_profiles(tmp_path: Path, text: str, pieces: list[str]) -> None:
    path = tmp_path / "clusters" / "bad.yaml"
    path.parent.mkdir()
    path.write_text(f"name: bad\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ClusterConfig)
    for piece in pieces:
        assert piece in str(err.value)


@pytest.mark.parametrize(
    ("time", "seconds"),
    [("10", 600), ("10:30", 630), ("01:00:00", 3600), ("1-12", 129600), ("2-00:00:00", 172800)],
)
def test_time_limits_in_seconds(time: str, seconds: int) -> None:
    assert JobResources(time=time).seconds == seconds


def test_several_nodes_for_a_step_that_does_not_train(project: dict[str, Path]) -> None:
    profile = _profile(project["root"], steps={"report": {"nodes": 2}})
    with pytest.raises(ConfigError, match="step 'report' asks for 2 nodes but trains no stage"):
        _plan(project, profile)


def test_training_notebook_without_launcher_parameter(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    project["pipeline"].write_text(PIPELINE.replace("notebook: train", "notebook: old_train"))
    _, jobs = _plan(project, _profile(project["root"]))  # a dry run shows the problem
    assert "old_train.ipynb has no `launcher` parameter" in jobs[1].problems[0]
    _fake_slurm(project["root"], monkeypatch)
    with pytest.raises(ConfigError, match="cannot submit:\n.*old_train.ipynb has no `launcher`"):
        submit(project["pipeline"], _profile(project["root"]), notebooks_dir=project["notebooks"])
    one_node = _profile(project["root"], train={"nodes": 1, "gpus_per_node": 8})
    _, jobs = _plan(project, one_node)  # one node: the notebook's own nproc still works
    assert not jobs[1].problems and "launches with its own nproc" in jobs[1].notes[0]


def test_multi_node_training_without_hsdp_is_noted(project: dict[str, Path]) -> None:
    _, jobs = _plan(project, _profile(project["root"]))
    assert "parallel.replicate_nodes = 1 on 2 nodes" in jobs[1].notes[0]
    assert "--set base.parallel.replicate_nodes=2" in jobs[1].notes[0]
    _, jobs = _plan(
        project, _profile(project["root"]), overrides=["base.parallel.replicate_nodes=2"]
    )
    assert not jobs[1].notes


def test_unknown_step_in_set(project: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="prefix the key with a step name"):
        _plan(project, _profile(project["root"]), overrides=["optim.lr=1"])


# --------------------------------------------------------------------------------------------
# Submission with fake SLURM commands

FAKE = """\
#!/bin/bash
echo "$(basename "$0") $*" >> {log}
case "$(basename "$0")" in
  sbatch)
    n=$(grep -c '^sbatch' {log})
    if [ "$n" = "{fail_at}" ]; then echo "sbatch: error: Invalid account" >&2; exit 1; fi
    echo "$((100 + n));cluster" ;;
  scontrol)
    if [ "$1" = show ]; then echo "JobId=$4 JobState=PENDING Reason=Dependency Restarts=0"; fi ;;
esac
"""


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int = 0) -> Path:
    bin_dir, log = tmp_path / "fakebin", tmp_path / "slurm.log"
    bin_dir.mkdir()
    for name in ("sbatch", "scontrol", "scancel"):
        path = bin_dir / name
        path.write_text(FAKE.format(log=log, fail_at=fail_at))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_submit_holds_records_and_releases(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_slurm(project["root"], monkeypatch)
    run_dir, jobs = submit(
        project["pipeline"], _profile(project["root"]), notebooks_dir=project["notebooks"]
    )
    assert [j.job_id for j in jobs] == ["101", "102", "103"]
    calls = log.read_text().splitlines()
    assert calls[0] == f"sbatch --parsable --hold {run_dir}/cluster/prepare.sbatch"
    assert calls[-1] == "scontrol release 101,102,103"
    assert "#SBATCH --dependency=afterok:101" in (run_dir / "cluster" / "base.sbatch").read_text()
    manifest = json.loads(RunLayout(run_dir).manifest.read_text())
    assert manifest["cluster"]["jobs"]["base"]["job_id"] == "102"
    assert manifest["cluster"]["jobs"]["base"]["depends_on"] == ["prepare"]
    assert manifest["cluster"]["profile"]["name"] == "2x8-h100"
    assert manifest["git"] and manifest["pipeline_resolved"]["name"] == "tiny"
    # a second submission while the jobs are queued would write the same run folder
    with pytest.raises(ClusterError, match="still has jobs in the queue: prepare"):
        submit(project["pipeline"], _profile(project["root"]), notebooks_dir=project["notebooks"])


def test_refused_job_cancels_the_ones_submitted(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fake_slurm(project["root"], monkeypatch, fail_at=2)
    with pytest.raises(ClusterError, match="Invalid account"):
        submit(project["pipeline"], _profile(project["root"]), notebooks_dir=project["notebooks"])
    assert log.read_text().splitlines()[-1] == "scancel 101"


def test_missing_sbatch_is_a_clear_error(
    project: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ClusterError, match="sbatch, scontrol not found on PATH"):
        submit(project["pipeline"], _profile(project["root"]))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinylab.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _two_step_pipeline(tmp_path: Path) -> Path:
    """Notebooks named by absolute path, so the CLI needs no notebooks folder."""
    notebook = tmp_path / "nb.ipynb"
    _notebook(notebook, 'run_dir: str = "."\noverrides: list = []')
    pipeline = tmp_path / "params" / "pipelines" / "two.yaml"
    pipeline.parent.mkdir(parents=True)
    pipeline.write_text(
        f"name: two\nsteps:\n  - {{name: a, notebook: {notebook}}}\n"
        f"  - {{name: b, notebook: {notebook}, after: [a]}}\n"
    )
    return pipeline


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    pipeline = str(_two_step_pipeline(tmp_path))
    result = _cli("submit", pipeline, "--cluster", "nope")
    assert result.returncode == 2 and "no such profile" in result.stderr
    profile = tmp_path / "p.yaml"
    profile.write_text("name: p\ntrain: {nodes: 0}\n")
    result = _cli("submit", pipeline, "--cluster", str(profile))
    assert result.returncode == 2 and "train.nodes" in result.stderr
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    result = _cli("submit", pipeline, "--cluster", "local", env=env)
    assert result.returncode == 2 and "sbatch, scontrol not found on PATH" in result.stderr
    result = _cli("status", str(tmp_path))
    assert result.returncode == 2 and "no manifest.json" in result.stderr


def test_cli_dry_run_prints_the_scripts(tmp_path: Path) -> None:
    pipeline = _two_step_pipeline(tmp_path)
    env = {**os.environ, "PATH": str(tmp_path / "empty")}  # no sbatch needed
    result = _cli(
        "submit", str(pipeline), "--cluster", "local", "--dry-run", "--run-id", "x", env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("#!/bin/bash") == 2
    assert "/outputs/runs/x/cluster/b.sbatch =====" in result.stdout
    assert "#SBATCH --dependency=afterok:<job id of a>" in result.stdout


def test_cli_dry_run_of_the_paper_pipeline_on_two_nodes() -> None:
    pipeline = PARAMS_DIR / "pipelines" / "tinyllama-v1.1.yaml"
    if not pipeline.is_file():
        pytest.skip("params/pipelines/tinyllama-v1.1.yaml is not there")
    result = _cli("submit", str(pipeline), "--cluster", "2x8-h100", "--dry-run")
    assert result.returncode == 0, result.stderr
    scripts = result.stdout.split("# ===== ")[1:]
    assert len(scripts) == len(load_params(pipeline).steps)
    trains = [s for s in scripts if "#SBATCH --nodes=2" in s]
    # base; continual + cooldown of three variants and of math&code LoRA; two counterfactuals
    assert len(trains) == 11
    assert all("--nproc-per-node=8 --rdzv-backend=c10d" in s for s in trains)
    report = next(
        s for s in scripts if s.startswith("/shared/tinylab/runs/tinyllama-v1.1/cluster/report")
    )
    assert report.count("<job id of eval-") == 11
    assert "parallel.replicate_nodes" in result.stderr


# --------------------------------------------------------------------------------------------
# Status


def test_status_shows_steps_jobs_and_last_metrics(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stage = run_dir / "stages" / "base"
    stage.mkdir(parents=True)
    lines = [
        {"kind": "train", "step": 1, "tokens": 256, "loss": 9.5, "lr": 1e-4},
        {"kind": "train", "step": 2, "tokens": 512, "loss": 8.25, "lr": 2e-4},
        {"kind": "val", "step": 2, "tokens": 512, "domains": {}},
    ]
    (stage / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n{torn")
    manifest = {
        "pipeline_resolved": {"steps": [{"name": "prepare"}, {"name": "base"}]},
        "steps": {"prepare": {"status": "done", "seconds": 12.0}, "base": {"status": "running"}},
        "cluster": {"jobs": {"base": {"job_id": "7", "state": "RUNNING", "restarts": 1}}},
    }
    RunLayout(run_dir).manifest.write_text(json.dumps(manifest))
    status = run_status(run_dir)
    assert status["metrics"]["base"]["step"] == 2
    text = format_status(status)
    assert "prepare  done     -         -            -" in text
    assert "base     running  7         RUNNING      1" in text
    assert "base: step=2 tokens=512 loss=8.25 lr=0.0002" in text
