"""The artifact store: a folder and an S3 bucket (moto's server on 127.0.0.1) keep a study's weights
alike; the base model is the study's by its sha256; a store that is down or refuses writes says so in
one line."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config
from optuna.trial import TrialState
from s3server import GcsServer, S3Server, environment, free_port

from autoprune.errors import ConfigError
from autoprune.results.export import export_trial, trial_model
from autoprune.search.artifacts import BASE_KEY, Artifacts, ArtifactStoreError, weights_key
from autoprune.search.front import front_numbers
from autoprune.search.paths import study_artifacts
from autoprune.search.rebuild import base_file
from autoprune.search.record import StudyRecord
from autoprune.search.run import run_study, run_worker


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    with environment(server.env):
        yield server
    server.stop()


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsServer]:
    server = GcsServer()
    with environment(server.env):
        yield server
    server.stop()


@pytest.fixture(params=["folder", "s3", "gs"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "folder":
        return str(tmp_path / "store")
    server: S3Server | GcsServer = request.getfixturevalue("s3" if request.param == "s3" else "gcs")
    return f"{request.param}://{server.bucket()}/team/study"


def test_a_folder_and_either_bucket_keep_read_list_and_remove_alike(store_url: str) -> None:
    store = Artifacts(store_url)
    store.check_writable()
    assert store.weight_numbers() == set() and store.weights(3) is None
    assert store.put_weights(3, b"three") == hashlib.sha256(b"three").hexdigest()
    store.put_weights(12, b"twelve")
    store.put("finetune/trial-3-abc/checkpoint.pt", b"ckpt")
    assert store.weight_numbers() == {3, 12}  # the fine-tune's checkpoint is not a trial's weights
    assert store.weights(3) == b"three" and store.has_weights(12) and not store.has_weights(4)
    assert sorted(store.keys()) == ["finetune/trial-3-abc/checkpoint.pt", "trial-12.pt", "trial-3.pt"]
    store.remove_weights(3)
    store.remove_weights(3)  # gone already: no error
    assert store.weight_numbers() == {12} and store.weights(3) is None
    assert store.where("trial-12.pt").startswith(store_url.rstrip("/"))


def test_a_bucket_prefix_is_the_study_s_own(s3: S3Server) -> None:
    bucket = s3.bucket()
    Artifacts(f"s3://{bucket}/a").put_weights(1, b"a")
    Artifacts(f"s3://{bucket}/ab").put_weights(2, b"ab")
    assert Artifacts(f"s3://{bucket}/a").weight_numbers() == {1}
    assert s3.keys(bucket) == ["a/trial-1.pt", "ab/trial-2.pt"]


class _Broken(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError("connection reset")


def test_a_folder_write_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    store = Artifacts(str(tmp_path))
    with pytest.raises(OSError, match="connection reset"):
        store._backend.write(weights_key(1), _Broken(b"x"))
    assert store.weight_numbers() == set() and not list(tmp_path.rglob("*"))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_an_unreachable_store_is_retried_then_fails_with_one_line() -> None:
    logger, shown = logging.getLogger("optuna.artifacts._backoff"), _Lines()
    logger.addHandler(shown)
    try:
        with environment({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}):
            store = Artifacts("s3://gone/prefix", retries=3)
            with pytest.raises(ArtifactStoreError) as caught:
                store.put_weights(1, b"weights")
    finally:
        logger.removeHandler(shown)
    message = str(caught.value)
    assert message.startswith("artifact store s3://gone/prefix: could not write trial-1.pt after 3 tries: ")
    assert "Could not connect to the endpoint URL" in message and "\n" not in message
    assert len(shown.lines) == 2  # Optuna's backoff: a line per retry, without its traceback
    assert all(line.endswith("; retrying") and "\n" not in line for line in shown.lines)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://key:secret@bucket/p", "credentials never go in the URL"),
        ("s3://key:secret@bucket/p", "credentials never go in the URL"),
        ("s3:///p", "name a bucket, as in s3://bucket/prefix"),
        ("ftp://host/p", "a folder, s3://bucket/prefix or gs://bucket/prefix"),
    ],
)
def test_a_store_url_this_version_cannot_use_is_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Artifacts(url)


def test_a_bucket_that_refuses_writes_is_refused_before_the_study_trains_anything(s3: S3Server, runs_dir: Path) -> None:
    config = tiny_config(runs_dir, "refused", "study.trials=2", f"study.artifacts='s3://{s3.bucket()}/p'")
    with s3.checking_credentials(), pytest.raises(ArtifactStoreError) as caught:
        run_study(config)
    message = str(caught.value)
    assert message.startswith(f"artifact store {config.study.artifacts} cannot be written from this machine: ")
    assert "InvalidAccessKeyId" in message and "\n" not in message
    assert not (runs_dir / "cache").exists()  # no base model trained


@pytest.fixture(scope="module")
def bucket_study(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, str, Path]:
    runs = tmp_path_factory.mktemp("bucket-runs")
    bucket = s3.bucket()
    config = tiny_config(runs, "in-bucket", "study.trials=4", f"study.artifacts='s3://{bucket}/team'")
    study = run_study(config)
    return study, bucket, runs


def test_a_study_with_a_bucket_keeps_its_weights_and_base_model_there(
    s3: S3Server, bucket_study: tuple[optuna.Study, str, Path], tmp_path: Path
) -> None:
    study, bucket, runs = bucket_study
    record = StudyRecord.from_study(study)
    prefix = f"team/in-bucket/{record.study_id}/"
    assert record.artifacts == f"s3://{bucket}/{prefix.rstrip('/')}" and record.base_in_store
    keys = s3.keys(bucket)
    front = front_numbers(study)
    assert keys == sorted([prefix + BASE_KEY, *(prefix + weights_key(n) for n in front)])
    assert hashlib.sha256(s3.get(bucket, prefix + BASE_KEY)).hexdigest() == record.base_sha256
    assert not list(runs.rglob("trial-*.pt"))  # nothing of the front on the local disk
    for number in front:
        data = s3.get(bucket, prefix + weights_key(number))
        assert hashlib.sha256(data).hexdigest() == study.trials[number].user_attrs["weights_sha256"]
    result = export_trial(study, front[0], tmp_path / "export")
    assert result.measurement.accuracy == study.trials[front[0]].user_attrs["accuracy"]


def test_a_machine_without_the_base_model_fetches_it_from_the_store_and_checks_it(
    bucket_study: tuple[optuna.Study, str, Path], tmp_path: Path
) -> None:
    study, _bucket, _runs = bucket_study
    record = StudyRecord.from_study(study)
    runs = tmp_path / "other-machine" / "runs"
    config = dataclasses.replace(record.config, study=dataclasses.replace(record.config.study, runs_dir=str(runs)))
    other = dataclasses.replace(record, config=config, base_checkpoint=tmp_path / "not-here.pt")
    fetched = base_file(other, study_artifacts(study))
    assert fetched.parent == runs / "cache"
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == record.base_sha256
    fetched.write_bytes(b"damaged")  # a damaged copy is fetched again
    assert base_file(other, study_artifacts(study)) == fetched
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == record.base_sha256


def test_a_machine_whose_base_model_differs_is_refused_before_its_first_trial(
    bucket_study: tuple[optuna.Study, str, Path],
) -> None:
    study, _bucket, _runs = bucket_study
    record = StudyRecord.from_study(study)
    path = record.base_checkpoint
    original = path.read_bytes()
    state = torch.load(io.BytesIO(original), weights_only=True)
    trials = len(study.trials)
    try:
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
        storage = f"sqlite:///{Path(record.config.study.runs_dir) / 'in-bucket'}.db"
        with pytest.raises(ConfigError) as caught:
            run_worker(storage, "in-bucket")
    finally:
        path.write_bytes(original)
    assert str(caught.value).startswith(f"this machine's {path} is not the study's base model (sha256 ")
    assert str(caught.value).endswith("remove it, and the study's is fetched from its artifact store")
    assert len(study.trials) == trials


def test_a_worker_of_a_study_without_a_store_and_without_its_base_model_is_refused(runs_dir: Path) -> None:
    study = run_study(tiny_config(runs_dir, "local", "study.trials=1", "study.baselines=[0.5]"))
    path = StudyRecord.from_study(study).base_checkpoint
    path.rename(path.with_suffix(".moved"))
    with pytest.raises(ConfigError, match="the study's base model is not on this machine .* --artifacts URL"):
        run_worker(f"sqlite:///{runs_dir / 'local'}.db", "local")
    assert not path.exists()  # not trained again


def test_a_trial_whose_weights_cannot_be_stored_fails_with_the_reason(
    runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(self: Artifacts, number: int, data: bytes) -> str:
        raise ArtifactStoreError(f"artifact store {self.url}: could not write trial-{number}.pt after 10 tries: down")

    monkeypatch.setattr(Artifacts, "put_weights", down)
    config = tiny_config(runs_dir, "down", "study.trials=2", "study.baselines=[0.5]", "study.max_failures=3")
    with pytest.raises(Exception, match="failed"):
        run_study(config)
    study = optuna.load_study(study_name="down", storage=f"sqlite:///{runs_dir / 'down'}.db")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and not [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert failed[0].user_attrs["fail_reason"].startswith("its weights could not be stored: artifact store ")


def test_a_study_kept_in_a_local_folder_reads_its_weights_as_before(runs_dir: Path) -> None:
    study = run_study(tiny_config(runs_dir, "plain", "study.trials=3"))
    record = StudyRecord.from_study(study)
    folder = Path(str(record.artifacts))
    assert folder == (runs_dir / "plain" / str(record.study_id)).resolve() and not record.base_in_store
    files = {int(p.stem.removeprefix("trial-")) for p in folder.glob("trial-*.pt")}
    assert files == set(front_numbers(study))
    trial_model(study, front_numbers(study)[0])


def test_a_worker_reaches_a_shared_folder_mounted_at_another_path(runs_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        runs_dir, "mounted", "study.trials=2", "study.baselines=[0.5]", f"study.artifacts='{tmp_path / 'share'}'"
    )
    study = run_study(config)
    (tmp_path / "share").rename(tmp_path / "elsewhere")  # this machine mounts the share elsewhere
    storage = f"sqlite:///{runs_dir / 'mounted'}.db"
    record = StudyRecord.from_study(study)
    record.base_checkpoint.unlink()  # the base model, too, must come from the share
    with pytest.raises(ConfigError, match="is missing from its artifact store"):
        run_worker(storage, "mounted")  # the recorded path: nothing there
    config_more = dataclasses.replace(record.config, study=dataclasses.replace(record.config.study, trials=4))
    dataclasses.replace(record, config=config_more).save(study)
    run_worker(storage, "mounted", artifacts=str(tmp_path / "elsewhere"))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4
    folder = tmp_path / "elsewhere" / "mounted" / str(record.study_id)
    assert {int(p.stem.removeprefix("trial-")) for p in folder.glob("trial-*.pt")} == set(front_numbers(study))


def test_a_study_keeps_its_weights_and_base_model_in_google_cloud_storage(gcs: GcsServer, runs_dir: Path) -> None:
    from google.cloud import storage

    bucket = gcs.bucket()
    config = tiny_config(runs_dir, "in-gcs", "study.trials=3", f"study.artifacts='gs://{bucket}/team'")
    study = run_study(config)
    record = StudyRecord.from_study(study)
    prefix = f"team/in-gcs/{record.study_id}/"
    names = sorted(blob.name for blob in storage.Client().list_blobs(bucket))
    front = front_numbers(study)
    assert names == sorted([prefix + BASE_KEY, *(prefix + weights_key(n) for n in front)])
    assert not list(runs_dir.rglob("trial-*.pt"))
    trial_model(study, front[0])
