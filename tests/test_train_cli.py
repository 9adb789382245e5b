"""`tinylab train`: trains a stage into a run folder; bad input exits 2 with one message. The
command runs in this process (the subprocess entry point is covered by tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _cli import tinylab
from _train_fixtures import new_run, prepare_data, stage_config

from tinylab.config.loader import dump_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "stage.yaml"
    path.write_text(dump_config(stage_config(max_tokens=2048)))
    return path


def test_train_runs_a_stage(tmp_path: Path, config: Path, monkeypatch, capsys) -> None:
    run = new_run(tmp_path, prepare_data(tmp_path / "prepared"))
    args = ("train", str(config), "--run-dir", str(run), "--set", "optim.lr=2e-3",
            "--profile-steps", "2")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = tinylab(monkeypatch, *args)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err
    assert "stage base: step 2, 2,048 tokens" in capsys.readouterr().out
    assert "lr: 0.002" in (run / "stages" / "base" / "resolved.yaml").read_text()
    assert (run / "stages" / "base" / "profile" / "summary.json").is_file()


def test_train_with_bad_profile_steps_exits_2_before_anything(
    tmp_path, config, monkeypatch, capsys
) -> None:
    args = ("train", str(config), "--run-dir", str(tmp_path), "--profile-steps", "3-1")
    assert tinylab(monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert "--profile-steps '3-1': give FIRST-LAST" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [config]


def test_train_without_prepared_data_exits_2(tmp_path, config, monkeypatch, capsys) -> None:
    assert tinylab(monkeypatch, "train", str(config), "--run-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no prepared data" in err and "Traceback" not in err


def test_train_with_an_indivisible_batch_exits_2(tmp_path, config, monkeypatch, capsys) -> None:
    args = ("train", str(config), "--run-dir", str(tmp_path), "--nproc", "3")
    assert tinylab(monkeypatch, *args) == 2
    assert "world_size = 4 x 32 x 3" in capsys.readouterr().err


def test_the_cli_describes_profile_steps_as_python_m_tinylab_train_does() -> None:
    """The CLI keeps its own copy of the text (importing tinylab.train would load torch)."""
    import typer.main

    from tinylab.cli import app
    from tinylab.train.profiling import PROFILE_STEPS_HELP

    train = typer.main.get_command(app).commands["train"]
    (option,) = [p for p in train.params if p.name == "profile_steps"]
    assert option.help == PROFILE_STEPS_HELP
