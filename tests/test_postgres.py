"""Two workers share one study through a real PostgreSQL server (started by .ci/run).

The server's URL comes from ``AUTOPRUNE_TEST_POSTGRES_URL``. Without it the test is skipped on a
developer's machine, and fails under CI (``CI=true``): there the server must start.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
import test_workers
from optuna.trial import TrialState
from test_workers import search_args, with_cache

from autoprune.cli import main
from autoprune.search.storage import make_storage

URL_ENV = "AUTOPRUNE_TEST_POSTGRES_URL"

base_cache = test_workers.base_cache  # the module's fixture, shared


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(URL_ENV, "")
    if not url:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{URL_ENV} is not set under CI: the PostgreSQL server of .ci/run did not start")
        pytest.skip(f"no PostgreSQL server: set {URL_ENV}=postgresql://user:password@127.0.0.1:PORT/db")
    return url


def test_two_workers_share_a_study_through_postgresql(
    postgres_url: str,
    runs_dir: Path,
    base_cache: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with_cache(runs_dir, base_cache)
    name = f"digits-pg-{uuid.uuid4().hex[:8]}"
    args = search_args(runs_dir, "--storage", postgres_url, "--set", f"study.name='{name}'", "--workers", "2")
    assert main([*args, "--trials", "6"]) == 0
    out = capfd.readouterr()
    secret = postgres_url.split("@", 1)[0].rsplit(":", 1)[-1]
    if secret and "://" not in secret:
        assert secret not in out.out and secret not in out.err
    study = optuna.load_study(study_name=name, storage=make_storage(postgres_url))
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(done) == 6
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert not secret or secret not in repr(study.user_attrs)
