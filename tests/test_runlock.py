"""The training run folder: one process at a time, stale locks taken over, and a failed fresh
start leaves nothing it wrote (issue 21, cases 3 and 11)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segmote.errors import InputError
from segmote.training.runlock import LOCK_NAME, run_folder

STATE = "state.safetensors"


def test_lock_holds_pid_and_goes_away(tmp_path):
    run = tmp_path / "run"
    with run_folder(run, False, STATE):
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(InputError, match=f"another training run \\(pid {os.getpid()}\\)"):
            with run_folder(run, False, STATE):  # a second holder, even in the same process
                pass
        (run / "adapter.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in run.iterdir()) == ["adapter.safetensors"]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(f"{dead}\n")  # as a SIGKILLed run leaves it
    with pytest.warns(UserWarning, match=f"lock of pid {dead} was stale"):
        with run_folder(run, False, STATE):
            assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not (run / LOCK_NAME).exists()


def test_failed_fresh_start_removes_only_what_it_wrote(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with run_folder(run, False, STATE):
            (run / "config.yaml").write_text("x")
            (run / "cache").mkdir()
            (run / "cache" / "entry.npy").write_bytes(b"x")
            raise RuntimeError("encoder failed")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    with pytest.raises(KeyboardInterrupt):
        with run_folder(tmp_path / "new", False, STATE):
            (tmp_path / "new" / "split.json").write_text("{}")
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()  # made by the run: gone with it


def test_failure_after_the_first_saved_state_keeps_the_run(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_folder(run, False, STATE):
            (run / STATE).write_bytes(b"x")  # resumable from here on
            (run / "config.yaml").write_text("x")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", STATE]
