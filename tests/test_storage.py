"""Storages: masked passwords in every URL form, one line for a read-only or full folder or
database, the PostgreSQL driver, and SQLite workers that never pop the same enqueued trial."""

from __future__ import annotations

import errno
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from conftest import REPO
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState
from test_faults import _error as one_error_line
from test_workers import search_args

from autoprune._logging import redact_text, redact_url
from autoprune.cli import main
from autoprune.errors import ConfigError
from autoprune.search import storage as storage_module
from autoprune.search.paths import artifacts_dir
from autoprune.search.storage import LockedSQLiteStorage, make_storage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# --- passwords -------------------------------------------------------------------------------------

URLS = [
    ("postgresql://alice:s3cret@db:5432/studies", "postgresql://alice:***@db:5432/studies"),
    ("postgresql://alice@db:5432/studies?password=s3cret", "postgresql://alice@db:5432/studies?password=***"),
    (
        "postgresql://alice@db/studies?sslmode=require&password=s3cret&connect_timeout=5",
        "postgresql://alice@db/studies?sslmode=require&password=***&connect_timeout=5",
    ),
    ("postgresql://alice@db/studies?PWD=s3cret", "postgresql://alice@db/studies?PWD=***"),
    ("postgresql://alice@db/studies?a=1&Passwd=s3cret", "postgresql://alice@db/studies?a=1&Passwd=***"),
    ("postgresql://alice@db/studies?sslpassword=s3cret#x", "postgresql://alice@db/studies?sslpassword=***#x"),
    (
        "postgresql+psycopg://alice:s3cret@db/studies?password=s3cret",
        "postgresql+psycopg://alice:***@db/studies?password=***",
    ),
    (
        "postgresql://alice:s3cret@[2001:db8::1]:5432/studies?password=s3cret",
        "postgresql://alice:***@[2001:db8::1]:5432/studies?password=***",
    ),
    ("postgresql://alice:s3c@ret@db/studies", "postgresql://alice:***@db/studies"),
    ("postgresql://alice:s3c/ret@db/studies", "postgresql://alice:***@db/studies"),
    ("postgresql://alice:s3cr%40t@db/studies", "postgresql://alice:***@db/studies"),
]
UNCHANGED = [
    "postgresql://alice@db:5432/studies?sslmode=require",
    "postgresql://[2001:db8::1]:5432/studies?passwordless=1",
    "postgresql://alice@[::1]/studies",
    "sqlite:///runs/digits.db",
    "sqlite:///C:/runs/digits.db",
    "sqlite:///file:runs/digits.db?mode=ro&uri=true",
    "journal:///tmp/digits.log",
]


@pytest.mark.parametrize(("url", "shown"), [*URLS, *((url, url) for url in UNCHANGED)])
def test_redact_url_masks_userinfo_and_query_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"storage {url} cannot be reached (refused)") == f"storage {shown} cannot be reached (refused)"


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_redact_text_masks_shell_quoted_command_lines(url: str, shown: str) -> None:
    command = shlex.join(["autoprune", "report", "--storage", url, "--study", "digits"])
    assert redact_text(command) == command.replace(url, shown)
    assert redact_text(f"Regenerate: `{command}`") == f"Regenerate: `{command.replace(url, shown)}`"
    for quoted in (f"--storage '{url}'", f'--storage "{url}"', f"--set study.storage='{url}'"):
        assert redact_text(
            f"autoprune search {quoted} --workers 2"
        ) == f"autoprune search {quoted} --workers 2".replace(url, shown)


def test_redact_text_masks_every_url_of_a_line_and_is_idempotent() -> None:
    line = 'from "postgresql://a:one@h/d" to <mysql://b@h/d?pwd=two&x=1> and postgresql://c:three@h/d?password=four'
    masked = 'from "postgresql://a:***@h/d" to <mysql://b@h/d?pwd=***&x=1> and postgresql://c:***@h/d?password=***'
    assert redact_text(line) == masked
    assert redact_text(masked) == masked


# --- a read-only or full folder or database: one line, exit 2 ----------------------------------------

ELSEWHERE = "another folder (--set study.runs_dir=PATH, --storage URL or --out PATH)"


def _failing_mkdir(monkeypatch: pytest.MonkeyPatch, under: Path, exc: Exception | int) -> list[Path]:
    """``Path.mkdir`` of ``under`` or a folder in it raises ``exc`` (an errno: the OSError the system
    raises, e.g. ``OSError: [Errno 30] Read-only file system: PATH``); returns the paths it refused."""
    real = Path.mkdir
    refused: list[Path] = []

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == under or under in self.parents:
            refused.append(self)
            raise OSError(exc, os.strerror(exc), str(self)) if isinstance(exc, int) else exc
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    return refused


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EROFS, f"Read-only file system; use {ELSEWHERE} on a writable file system"),
        (errno.EACCES, f"Permission denied; make it writable for this user, or use {ELSEWHERE}"),
        (errno.ENOSPC, f"No space left on device; free some space there, or use {ELSEWHERE}"),
        (errno.EDQUOT, f"Disk quota exceeded; free some space there, or use {ELSEWHERE}"),
    ],
)
def test_unwritable_runs_folder_is_one_line_naming_it(
    runs_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int, message: str
) -> None:
    refused = _failing_mkdir(monkeypatch, runs_dir, code)
    line = one_error_line(capfd, main(search_args(runs_dir)))
    assert len(refused) == 1
    assert line == f"autoprune: error: {refused[0]}: {message}"


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "Input/output error", "x"), RuntimeError("a bug")])
def test_other_errors_keep_their_traceback(runs_dir: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    _failing_mkdir(monkeypatch, runs_dir, exc)
    with pytest.raises(type(exc)):
        main(search_args(runs_dir))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding the digits study with one trial (and the tiny base model)."""
    runs = tmp_path_factory.mktemp("stored") / "runs"
    assert main(search_args(runs, "--trials", "1", "--set", "study.baselines=[]", "--set", "train.epochs=1")) == 0
    return runs


def _trials(db: Path) -> list[tuple[int, str]]:
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    return [(t.number, t.state.name) for t in study.trials]


def test_artifacts_sit_beside_the_file_of_any_sqlite_or_journal_url(tmp_path: Path) -> None:
    for url in (
        f"sqlite:///{tmp_path}/x.db",
        f"sqlite:///file:{tmp_path}/x.db?mode=ro&uri=true",
        f"journal://{tmp_path}/x.log",  # journal:// followed by an absolute path
    ):
        assert artifacts_dir(url, "s") == tmp_path / "s", url
    assert artifacts_dir("postgresql://u:p@h/db", "s", tmp_path) == tmp_path / "s"


def test_read_only_database_is_one_line_and_the_study_is_unchanged(
    stored: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    db = stored / "digits.db"
    before = _trials(db)
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"  # what SQLite does with a file it may not write
    capfd.readouterr()
    line = one_error_line(
        capfd, main(search_args(stored, "--set", "train.epochs=1", "--storage", read_only, "--trials", "2"))
    )
    assert line == (
        f"autoprune: error: storage {read_only} is read-only (attempt to write a readonly database); make the "
        "database and its folder writable, or give another --storage URL (or --set study.runs_dir=PATH)"
    )
    assert _trials(db) == before == [(0, "COMPLETE")]


def _as_a_user(command: list[str]) -> list[str]:
    """``command`` run so that file modes apply: root without the capabilities that override them."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop CAP_DAC_OVERRIDE: file modes do not apply")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *command]


def test_chmod_read_only_folder_and_database_are_one_line_in_a_real_run(stored: Path, tmp_path: Path) -> None:
    """No mock: a folder of mode 0o555 (EACCES from mkdir), then a database file of mode 0o444
    (SQLite: "attempt to write a readonly database"), through ``python -m autoprune``."""
    folder, db = tmp_path / "read-only", stored / "digits.db"
    folder.mkdir(mode=0o555)
    db.chmod(0o444)
    try:
        results = [
            subprocess.run(
                _as_a_user([sys.executable, "-m", "autoprune", *args]),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            for args in (
                search_args(folder / "runs"),
                search_args(stored, "--set", "train.epochs=1", "--trials", "2"),
            )
        ]
    finally:
        db.chmod(0o644)
    assert [(r.returncode, r.stderr.strip().splitlines()[-1], "Traceback" in r.stderr) for r in results] == [
        (
            2,
            f"autoprune: error: {folder}/runs: Permission denied; make it writable for this user, or use {ELSEWHERE}",
            False,
        ),
        (
            2,
            f"autoprune: error: storage sqlite:///{db} is read-only (attempt to write a readonly database); make the "
            "database and its folder writable, or give another --storage URL (or --set study.runs_dir=PATH)",
            False,
        ),
    ]
    assert _trials(db) == [(0, "COMPLETE")]


def test_storage_internal_error_of_a_read_only_database_is_one_line(
    stored: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's own error, from a storage not opened by make_storage (no storage to name)."""
    from autoprune.search import run as run_module

    def write(*args: Any, **kwargs: Any) -> None:
        plain = RDBStorage(f"sqlite:///file:{stored / 'digits.db'}?mode=ro&uri=true")
        optuna.load_study(study_name="digits", storage=plain).set_user_attr("touched", True)

    monkeypatch.setattr(run_module, "run_study", write)
    capfd.readouterr()
    line = one_error_line(capfd, main(search_args(stored)))
    assert line == (
        "autoprune: error: the study's storage is read-only ((sqlite3.OperationalError) attempt to write a "
        "readonly database); make the database and its folder writable, or give another --storage URL "
        "(or --set study.runs_dir=PATH)"
    )


def test_full_database_raises_config_error_naming_the_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'full.db'}"
    study = optuna.create_study(storage=make_storage(url), study_name="full")
    storage = make_storage(url)

    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def no_more_pages(connection: Any, record: Any) -> None:  # SQLite's own SQLITE_FULL, as on a full disk
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")

    storage.engine.dispose()
    full = optuna.load_study(study_name="full", storage=storage)
    with pytest.raises(ConfigError) as caught:
        full.enqueue_trial({"x": 1}, user_attrs={"note": "x" * 20_000})
    assert str(caught.value) == (
        f"storage {url} is full (database or disk is full); free some space, or give another --storage URL "
        "(or --set study.runs_dir=PATH)"
    )
    assert len(study.trials) == 0


def test_unparsable_sqlite_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        make_storage("sqlite:runs/x.db")
    assert str(caught.value) == (
        "storage sqlite:runs/x.db cannot be reached: Could not parse SQLAlchemy URL from given URL string"
    )


def test_unopenable_database_is_a_config_error(tmp_path: Path) -> None:
    url = f"sqlite:///file:{tmp_path / 'missing.db'}?mode=ro&uri=true"
    with pytest.raises(ConfigError) as caught:
        make_storage(url)
    assert str(caught.value) == (
        f"storage {url} cannot be opened ((sqlite3.OperationalError) unable to open database file); check that "
        "its folder exists and is writable, or give another --storage URL (or --set study.runs_dir=PATH)"
    )


# --- the PostgreSQL driver ---------------------------------------------------------------------------


def test_postgres_extra_installs_psycopg_3() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras["postgres"] == ["psycopg[binary]>=3.1"]


@pytest.mark.parametrize(
    ("installed", "url", "opened"),
    [
        (("psycopg", "psycopg2"), "postgresql://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
        (("psycopg",), "postgres://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
        (("psycopg2",), "postgresql://u:pw@h/db", "postgresql+psycopg2://u:pw@h/db"),
        (("psycopg",), "postgresql+psycopg2://u:pw@h/db", "postgresql+psycopg2://u:pw@h/db"),
    ],
)
def test_postgres_url_names_the_installed_driver(
    monkeypatch: pytest.MonkeyPatch, installed: tuple[str, ...], url: str, opened: str
) -> None:
    _installed(monkeypatch, installed)
    assert storage_module._postgres_driver(url) == opened


def test_postgres_without_a_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, ())
    with pytest.raises(ConfigError) as caught:
        make_storage("postgresql://u:s3cret@h/db?password=s3cret")
    assert str(caught.value) == (
        "storage postgresql://u:***@h/db?password=*** needs a PostgreSQL driver: "
        "pip install 'autoprune[postgres]' (psycopg 3)"
    )


def _installed(monkeypatch: pytest.MonkeyPatch, modules: tuple[str, ...]) -> None:
    real = storage_module.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name in ("psycopg", "psycopg2"):
            return real("json") if name in modules else None
        return real(name, *args)

    monkeypatch.setattr(storage_module.importlib.util, "find_spec", find_spec)


# --- SQLite: one process at a time pops an enqueued trial --------------------------------------------


def test_sqlite_storage_locks_next_to_the_file_and_keeps_the_heartbeat(tmp_path: Path) -> None:
    storage = make_storage(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(storage, LockedSQLiteStorage)
    assert storage.lock == tmp_path / "x.db.lock"
    study = optuna.create_study(storage=storage, study_name="x")
    assert is_heartbeat_enabled(storage) and is_heartbeat_enabled(study._storage)
    assert not is_heartbeat_enabled(make_storage(f"sqlite:///{tmp_path / 'x.db'}", heartbeat_interval=None))
    assert type(make_storage("sqlite:///:memory:")) is RDBStorage


ROUNDS, PER_ROUND = 10, 10


def _pop_all(url: str, barrier: Barrier, popped: Any) -> None:
    """A worker process: each round, pop enqueued trials until none is left, as Study.ask does."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="race", storage=make_storage(url, heartbeat_interval=None))
    mine = []
    for _ in range(ROUNDS):
        barrier.wait()
        while (trial_id := study._pop_waiting_trial_id()) is not None:
            mine.append(trial_id)
        barrier.wait()
    popped.put(mine)


def test_two_processes_never_pop_the_same_enqueued_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(storage=make_storage(url, heartbeat_interval=None), study_name="race")
    spawn = multiprocessing.get_context("spawn")
    barrier, popped = spawn.Barrier(3, timeout=120), spawn.Queue()
    workers = [spawn.Process(target=_pop_all, args=(url, barrier, popped)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(ROUNDS):
            for x in range(PER_ROUND):
                study.enqueue_trial({"x": x})
            barrier.wait()  # both pop this round's trials
            barrier.wait()
        first, second = popped.get(timeout=60), popped.get(timeout=60)
    finally:
        for worker in workers:
            worker.join(timeout=60)
    enqueued = [t._trial_id for t in study.trials]
    assert len(enqueued) == ROUNDS * PER_ROUND
    assert sorted(first + second) == enqueued  # each trial popped exactly once
    assert len(set(first) & set(second)) == 0
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING] * ROUNDS * PER_ROUND
