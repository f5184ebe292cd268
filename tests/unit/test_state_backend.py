"""Where the rule job keeps its keyed state: RocksDB by default, the heap on request or where only the heap's
checkpoints exist, each backend's checkpoints apart (Flink restores one only with the backend that wrote it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flinkjob.job import checkpoint_dir, job_options, state_backend
from flinkjob.settings import RuleEngineSettings

pytestmark = pytest.mark.unit


def checkpoint(state_dir: Path, backend: str, job: str, number: int) -> Path:
    folder = checkpoint_dir(state_dir, backend) / job / f"chk-{number}"  # type: ignore[arg-type]
    folder.mkdir(parents=True)
    (folder / "_metadata").write_bytes(b"x")
    return folder


def test_a_new_state_dir_gets_rocksdb_with_incremental_checkpoints_of_its_own(tmp_path: Path) -> None:
    settings = RuleEngineSettings(state_dir=tmp_path)
    assert state_backend(settings) == "rocksdb"
    options = job_options(settings)
    assert options["state.backend.type"] == "rocksdb" and options["execution.checkpointing.incremental"] == "true"
    assert options["execution.checkpointing.dir"] == (tmp_path / "checkpoints-rocksdb").resolve().as_uri()
    assert options["state.backend.rocksdb.localdir"] == str((tmp_path / "rocksdb").resolve())
    assert "execution.state-recovery.path" not in options


def test_a_state_dir_with_only_the_heaps_checkpoints_keeps_the_heap_and_its_state(tmp_path: Path) -> None:
    newest = checkpoint(tmp_path, "hashmap", "job-a", 7)
    settings = RuleEngineSettings(state_dir=tmp_path)
    assert state_backend(settings) == "hashmap"
    options = job_options(settings)
    assert options["state.backend.type"] == "hashmap" and options["execution.checkpointing.incremental"] == "false"
    assert options["execution.state-recovery.path"] == newest.as_uri()


def test_each_backend_restores_only_its_own_checkpoints(tmp_path: Path) -> None:
    heap = checkpoint(tmp_path, "hashmap", "job-a", 3)
    rocks = checkpoint(tmp_path, "rocksdb", "job-b", 1)
    assert state_backend(RuleEngineSettings(state_dir=tmp_path)) == "rocksdb"  # it has state of its own now
    for backend, newest in (("hashmap", heap), ("rocksdb", rocks)):
        options = job_options(RuleEngineSettings(state_dir=tmp_path, state_backend=backend))
        assert options["state.backend.type"] == backend
        assert options["execution.state-recovery.path"] == newest.as_uri()


def test_a_session_cluster_keeps_rocksdb_in_its_own_working_dirs(tmp_path: Path) -> None:
    options = job_options(RuleEngineSettings(state_dir=tmp_path, flink_jobmanager="flink:8081"))
    assert options["execution.target"] == "remote" and options["rest.address"] == "flink"
    assert "state.backend.rocksdb.localdir" not in options  # the submitter's path means nothing on a TaskManager


def test_an_unknown_backend_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AM_STATE_BACKEND", "leveldb")
    with pytest.raises(ValueError, match="state_backend"):
        RuleEngineSettings(state_dir=tmp_path)
