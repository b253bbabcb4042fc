"""One study, machines without a shared disk: a real PostgreSQL server (started by .ci/run) holds the
trials, a real S3-compatible server (moto's, on 127.0.0.1) everything else. Each "machine" is a
process with its own working folder, HOME and cache; none has a path in common with another.

The server's URL comes from ``AUTOPRUNE_TEST_POSTGRES_URL`` (skipped without it, failed under CI).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import DIGITS, REPO
from optuna.trial import TrialState
from s3server import S3Server
from test_postgres import postgres_url  # noqa: F401  (the fixture)

import autoprune
from autoprune.search.artifacts import BASE_KEY, weights_key
from autoprune.search.front import front_numbers
from autoprune.search.record import StudyRecord
from autoprune.search.storage import make_storage

TRIALS = 12
SETTINGS = [
    "study.runs_dir='runs'",  # relative: each machine's own
    "train.epochs=3",
    "space.finetune_steps_min=2",
    "space.finetune_steps_max=6",
    "space.calibration_batches=1",
    "study.pick_floor=0",
]


def _machine(root: Path, name: str) -> tuple[Path, dict[str, str]]:
    folder = root / name
    (folder / "home").mkdir(parents=True)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HOME": str(folder / "home"),
        "XDG_CACHE_HOME": str(folder / "home" / ".cache"),
        "TORCH_HOME": str(folder / "home" / ".torch"),
    }
    return folder, env


def _autoprune(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoprune", *args]


@pytest.mark.slow
def test_two_machines_without_a_shared_disk_work_one_study_through_postgresql_and_s3(
    postgres_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    s3 = S3Server()
    try:
        bucket = s3.bucket()
        store = f"s3://{bucket}/studies"
        name = f"digits-s3-{uuid.uuid4().hex[:8]}"
        sets = [arg for item in [*SETTINGS, f"study.name='{name}'"] for arg in ("--set", item)]

        # machine a creates the study (its base model goes to the store) and runs no trial
        a, env_a = _machine(tmp_path, "a")
        create = [*_autoprune("search", str(DIGITS), *sets), "--storage", postgres_url, "--artifacts", store]
        subprocess.run(
            [*create, "--trials", str(TRIALS), "--workers", "0"],
            cwd=a,
            env={**env_a, **s3.env},
            check=True,
            capture_output=True,
            text=True,
        )
        study = optuna.load_study(study_name=name, storage=make_storage(postgres_url))
        record = StudyRecord.from_study(study)
        prefix = f"studies/{name}/{record.study_id}/"
        assert record.artifacts == f"s3://{bucket}/{prefix.rstrip('/')}" and record.base_in_store
        assert s3.keys(bucket) == [prefix + BASE_KEY] and not study.get_trials(states=(TrialState.COMPLETE,))
        shutil.rmtree(a)  # one filesystem plays every machine here: nothing of a's may be read by the others

        # machines b and c work it with nothing but the storage URL; the store goes away for a while
        workers = []
        for machine in ("b", "c"):
            folder, env = _machine(tmp_path, machine)
            command = _autoprune("worker", "--storage", postgres_url, "--study", name, "--threads", "1")
            out = (folder / "worker.log").open("w")
            workers.append(
                (
                    folder,
                    out,
                    subprocess.Popen(command, cwd=folder, env={**env, **s3.env}, stdout=out, stderr=subprocess.STDOUT),
                )
            )
        deadline = time.monotonic() + 300
        while len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for _f, _o, p in workers)
            time.sleep(0.2)
        s3.outage(4.0)
        for folder, out, proc in workers:
            assert proc.wait(timeout=600) == 0, (folder / "worker.log").read_text()
            out.close()
        logs = "".join((folder / "worker.log").read_text() for folder, _o, _p in workers)
        assert "; retrying" in logs  # the outage was met, and waited out

        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(done) == TRIALS and len({t.user_attrs["worker"] for t in done}) == 2
        front = front_numbers(study)
        assert s3.keys(bucket) == sorted([prefix + BASE_KEY, *(prefix + weights_key(n) for n in front)])
        for number in front:  # no front member without its weights
            data = s3.get(bucket, prefix + weights_key(number))
            assert hashlib.sha256(data).hexdigest() == study.trials[number].user_attrs["weights_sha256"]
        for folder, _o, _p in workers:  # each fetched the study's base model, kept no weights
            (fetched,) = (folder / "runs" / "cache").glob("study-base-*.pt")
            assert hashlib.sha256(fetched.read_bytes()).hexdigest() == record.base_sha256
            assert not list(folder.rglob("trial-*.pt"))

        # machine d has only the two URLs: report, export of every front member, load
        d, env_d = _machine(tmp_path, "d")
        env_d = {**env_d, **s3.env}
        stored = ["--storage", postgres_url, "--study", name]
        subprocess.run(
            _autoprune("report", *stored, "--out", "report"), cwd=d, env=env_d, check=True, capture_output=True
        )
        assert (d / "report" / "index.html").is_file()
        for number in front:
            out_dir = d / f"export-{number}"
            subprocess.run(
                _autoprune("export", *stored, "--trial", str(number), "--out", str(out_dir)),
                cwd=d,
                env=env_d,
                check=True,
                capture_output=True,
            )
            model = autoprune.load(out_dir)
            assert sum(p.numel() for p in model.parameters()) == study.trials[number].user_attrs["params"]
        assert not list(d.rglob("trial-*.pt"))
    finally:
        s3.stop()
