"""Several workers on one study: the trial limit across processes, storages, masked passwords."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import DIGITS, tiny_overrides
from optuna.trial import TrialState

from autoprune._logging import redact_text, redact_url
from autoprune.cli import main
from autoprune.search.artifacts import weights_key
from autoprune.search.front import front_numbers
from autoprune.search.paths import study_artifacts
from autoprune.search.record import StudyRecord
from autoprune.search.storage import make_storage, storage_kind


def search_args(runs_dir: Path, *extra: str) -> list[str]:
    args = ["search", str(DIGITS)]
    for item in tiny_overrides(runs_dir):
        args += ["--set", item]
    return [*args, *extra]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder whose cache holds the tiny digits base model (trained once for the module)."""
    runs = tmp_path_factory.mktemp("base") / "runs"
    assert main(search_args(runs, "--trials", "1", "--set", "study.baselines=[]", "--set", "study.name='warm'")) == 0
    return runs / "cache"


def with_cache(runs_dir: Path, cache: Path) -> Path:
    shutil.copytree(cache, runs_dir / "cache", ignore=shutil.ignore_patterns("*.lock"))
    return runs_dir


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def test_two_workers_share_one_sqlite_study_and_stop_at_the_trial_count(
    runs_dir: Path, base_cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with_cache(runs_dir, base_cache)
    assert main(search_args(runs_dir, "--trials", "10", "--workers", "2")) == 0
    err = capfd.readouterr().err
    assert "[worker 0]" in err and "[worker 1]" in err
    assert "training" not in err  # the base model came from the cache, read by the parent once
    storage = f"sqlite:///{runs_dir / 'digits.db'}"
    study = optuna.load_study(study_name="digits", storage=storage)
    done = completed(study)
    numbers = [t.number for t in study.trials]
    assert len(done) == 10
    assert len(numbers) == len(set(numbers))
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    workers = Counter(t.user_attrs["worker"] for t in done)
    assert len(workers) == 2, workers
    baselines = sorted(t.user_attrs["baseline"] for t in study.trials if "baseline" in t.user_attrs)
    assert baselines == [0.25, 0.5, 0.75]
    # the weight files of several workers: exactly the front's, each loadable
    assert study_artifacts(study, storage).weight_numbers() == set(front_numbers(study))


def test_rerun_with_workers_resumes_and_adds_only_the_missing_trials(runs_dir: Path, base_cache: Path) -> None:
    with_cache(runs_dir, base_cache)
    assert main(search_args(runs_dir, "--trials", "3")) == 0
    storage = f"sqlite:///{runs_dir / 'digits.db'}"
    first = [t.values for t in completed(optuna.load_study(study_name="digits", storage=storage))]
    assert main(search_args(runs_dir, "--trials", "6", "--workers", "2")) == 0
    study = optuna.load_study(study_name="digits", storage=storage)
    assert len(completed(study)) == 6
    assert [t.values for t in completed(study)][:3] == first


def test_journal_storage_runs_and_resumes(runs_dir: Path, base_cache: Path, tmp_path: Path) -> None:
    with_cache(runs_dir, base_cache)
    url = f"journal:///{(tmp_path / 'digits.log').as_posix().lstrip('/')}"
    assert main(search_args(runs_dir, "--storage", url, "--trials", "2")) == 0
    assert main(search_args(runs_dir, "--storage", url, "--trials", "3")) == 0
    study = optuna.load_study(study_name="digits", storage=make_storage(url))
    assert len(completed(study)) == 3
    assert (tmp_path / "digits").is_dir()  # front weights next to the journal file


def test_worker_joins_a_stored_study_from_its_url(
    runs_dir: Path, base_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_cache(runs_dir, base_cache)
    assert main(search_args(runs_dir, "--trials", "2")) == 0
    storage = f"sqlite:///{runs_dir / 'digits.db'}"
    study = optuna.load_study(study_name="digits", storage=storage)
    record = StudyRecord.from_study(study)
    more = dataclasses.replace(record.config.study, trials=4)
    dataclasses.replace(record, config=dataclasses.replace(record.config, study=more)).save(study)
    monkeypatch.setenv("AUTOPRUNE_STORAGE", storage)
    assert main(["worker", "--study", "digits", "--threads", "1"]) == 0
    assert len(completed(optuna.load_study(study_name="digits", storage=storage))) == 4


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cr%40t@db.example:5432/studies", "postgresql://alice:***@db.example:5432/studies"),
        (
            "postgresql+psycopg2://bob:pw@10.0.0.1/x?sslmode=require",
            "postgresql+psycopg2://bob:***@10.0.0.1/x?sslmode=require",
        ),
        ("postgresql://carol@host/db", "postgresql://carol@host/db"),
        ("sqlite:///runs/digits.db", "sqlite:///runs/digits.db"),
        ("journal:///tmp/x.log", "journal:///tmp/x.log"),
    ],
)
def test_redact_url_masks_the_password_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cr" not in redact_text(f"cannot reach {url}: refused")


def test_storage_kinds() -> None:
    assert storage_kind("sqlite:///a.db") == "sqlite"
    assert storage_kind("postgresql+psycopg2://u@h/d") == "postgresql"
    assert storage_kind("journal:///a.log") == "journal"
    assert storage_kind("mysql://u@h/d") == "other"


def test_two_stores_with_one_study_name_keep_their_weights_apart(runs_dir: Path, base_cache: Path) -> None:
    import hashlib

    from autoprune.errors import AutopruneError
    from autoprune.results.export import trial_model

    with_cache(runs_dir, base_cache)
    stores = {name: f"sqlite:///{runs_dir / name}" for name in ("A.db", "B.db")}
    for seed, url in enumerate(stores.values()):  # another seed: other weights for the same trial numbers
        assert main(search_args(runs_dir, "--storage", url, "--trials", "3", "--seed", str(seed))) == 0
    a, b = (optuna.load_study(study_name="digits", storage=url) for url in stores.values())
    store_a, store_b = study_artifacts(a, stores["A.db"]), study_artifacts(b, stores["B.db"])
    folder_a, folder_b = store_a.folder, store_b.folder
    assert folder_a is not None and folder_b is not None
    assert folder_a != folder_b and folder_a.parent == folder_b.parent == runs_dir.resolve() / "digits"
    files_a = store_a.weight_numbers()
    assert files_a == set(front_numbers(a))
    for number in files_a:  # B's search left A's files as A wrote them
        data = (folder_a / weights_key(number)).read_bytes()
        assert hashlib.sha256(data).hexdigest() == a.trials[number].user_attrs["weights_sha256"]
        trial_model(a, number, storage=stores["A.db"])
    number = sorted(files_a & store_b.weight_numbers())[0]
    shutil.copyfile(folder_b / weights_key(number), folder_a / weights_key(number))
    with pytest.raises(AutopruneError, match=f"does not belong to trial {number} of study 'digits'"):
        trial_model(a, number, storage=stores["A.db"])


def test_workers_auto_counts_cpu_cores_and_on_cuda_what_each_gpu_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from autoprune.search import loop

    monkeypatch.setattr(loop, "cpu_count", lambda: 16)
    assert loop.auto_workers(torch.device("cpu")) == 16 // loop.CORES_PER_CPU_WORKER
    free = {0: 139 * 2**30, 1: 3 * 2**30}  # a large idle GPU, and one mostly taken
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 140 * 2**30))
    assert loop.auto_workers(torch.device("cuda", 0)) == loop.WORKERS_PER_GPU_MAX
    assert loop.auto_workers(torch.device("cuda", 1)) == 1  # 3 GiB free holds one worker
    assert loop.auto_workers(torch.device("cuda")) == loop.WORKERS_PER_GPU_MAX + 1
    monkeypatch.setattr(loop, "cpu_count", lambda: 4)
    assert loop.auto_workers(torch.device("cuda")) == 2 + 1  # 4 cores over 2 GPUs: 2 on the first
    free[1] = 2**29  # less than one worker's share: still one, the study needs it
    assert loop.auto_workers(torch.device("cuda", 1)) == 1


def test_search_takes_workers_auto_and_refuses_other_words(
    runs_dir: Path, base_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoprune.search import loop

    with_cache(runs_dir, base_cache)
    monkeypatch.setattr(loop, "cpu_count", lambda: 1)
    assert main(search_args(runs_dir, "--trials", "2", "--workers", "auto")) == 0
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{runs_dir / 'digits.db'}")
    assert len(completed(study)) == 2
    assert len({t.user_attrs["worker"] for t in completed(study)}) == 1  # one core: one worker, this process
    with pytest.raises(SystemExit) as exit_info:
        main(search_args(runs_dir, "--workers", "many"))
    assert exit_info.value.code == 2
    assert "'many': a number of workers, or 'auto'" in capsys.readouterr().err


def test_workers_started_by_hand_in_containers_get_their_own_sampler_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    from autoprune.config import StudyConfig
    from autoprune.search import opening

    monkeypatch.setattr(opening.os, "getpid", lambda: 1)  # every pod's worker is process 1
    seeds = set()
    for host in ("autoprune-workers-0-abcde", "autoprune-workers-1-fghij", "node17"):
        monkeypatch.setattr(opening.socket, "gethostname", lambda host=host: host)
        seeds.add(opening.sampler_seed(StudyConfig(), 5, opening.worker_number(None)))
    assert len(seeds) == 3
    assert [opening.worker_number(i) for i in range(3)] == [1, 2, 3]  # search --workers: 0 is the search
