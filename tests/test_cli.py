"""The `tinylab` command: exit codes, messages, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tinylab.config.loader import PARAMS_DIR


def tinylab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinylab.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_the_commands() -> None:
    result = tinylab("--help")
    assert result.returncode == 0
    for command in ("params", "model"):
        assert command in result.stdout


def test_model_info_json_for_the_paper_model() -> None:
    result = tinylab("model", "info", "tinyllama-1.1b", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["params"] == 1_100_048_384
    assert info["flops_per_token"] == 7_314_370_560


def test_params_check_good_files() -> None:
    files = [str(p) for p in sorted(PARAMS_DIR.rglob("*.yaml"))]
    result = tinylab("params", "check", *files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(files)


def test_params_check_bad_file_exit_2_without_traceback(params: Path) -> None:
    bad = params / "stages" / "bad.yaml"
    bad.write_text("extends: base.yaml\noptim: {lr: -1, min_lr: 0}\n")
    result = tinylab("params", "check", str(bad))
    assert result.returncode == 2
    assert "optim.lr = -1" in result.stderr
    assert "Traceback" not in result.stderr
    debug = tinylab("--debug", "params", "check", str(bad))
    assert "Traceback" in debug.stderr


def test_params_show_applies_overrides(params: Path) -> None:
    result = tinylab(
        "params", "show", str(params / "stages" / "base.yaml"), "--set", "optim.lr=5e-4"
    )
    assert result.returncode == 0, result.stderr
    assert "lr: 0.0005" in result.stdout


def test_params_show_bad_override_exits_2(params: Path) -> None:
    result = tinylab("params", "show", str(params / "stages" / "base.yaml"), "--set", "optim.lr")
    assert result.returncode == 2
    assert "expected key.path=value" in result.stderr


def test_model_info_unknown_preset_exits_2() -> None:
    result = tinylab("model", "info", "nope")
    assert result.returncode == 2
    assert "presets" in result.stderr


def test_run_bad_input_exits_2(tmp_path: Path) -> None:
    missing = tinylab("run", str(tmp_path / "pipelines" / "nope.yaml"))
    assert missing.returncode == 2
    assert "file not found" in missing.stderr and "Traceback" not in missing.stderr
    unknown_step = tinylab("run", str(PARAMS_DIR / "pipelines" / "demo.yaml"), "--from", "nope",
                           "--run-id", f"cli-test-{tmp_path.name}")  # fmt: skip
    assert unknown_step.returncode == 2
    assert "--from 'nope': no such step" in unknown_step.stderr


def test_report_on_a_folder_that_is_no_run_exits_2(tmp_path: Path) -> None:
    result = tinylab("report", str(tmp_path))
    assert result.returncode == 2
    assert "not a run folder" in result.stderr and "Traceback" not in result.stderr


def tinylab_with(patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with `patch` (Python source) run first in its process, e.g. to plant a bug."""
    main = f"import sys\nfrom tinylab.cli import run\nsys.argv = ['tinylab', *{args!r}]\nrun()"
    code = f"{patch}\n{main}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


RAISE = "def boom(*args, **kwargs):\n    raise {error}('planted bug')\n"


def test_a_bug_keeps_its_traceback_and_exits_1() -> None:
    for error in ("ValueError", "RuntimeError"):
        patch = RAISE.format(error=error) + "import tinylab.model\ntinylab.model.load_preset = boom"
        result = tinylab_with(patch, "model", "info", "tinyllama-1.1b")
        assert result.returncode == 1, result.stderr
        assert "Traceback" in result.stderr and f"{error}: planted bug" in result.stderr


def test_a_runtime_error_from_training_is_not_turned_into_one_line(tmp_path: Path) -> None:
    patch = (
        RAISE.format(error="RuntimeError")
        + "import tinylab.train\ntinylab.train.train_stage = boom"
    )
    stage = str(PARAMS_DIR / "stages" / "demo" / "base.yaml")
    result = tinylab_with(patch, "train", stage, "--run-dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: planted bug" in result.stderr


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path: Path) -> None:
    patch = "from tinylab.errors import UserError\n" + RAISE.format(error="UserError")
    patch += "import tinylab.model\ntinylab.model.load_preset = boom"
    result = tinylab_with(patch, "model", "info", "tinyllama-1.1b")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: planted bug"]
    for command in (
        ("model", "info", "nope"),
        ("report", str(tmp_path)),
        ("status", str(tmp_path)),
    ):
        debug = tinylab("--debug", *command)
        assert debug.returncode == 2, debug.stderr
        assert "Traceback" in debug.stderr and debug.stderr.rstrip().splitlines()[-1].startswith(
            "error: "
        )
