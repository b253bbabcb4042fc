"""The base-model cache is keyed by the user's code and named flat; an atomic save leaves nothing half-written."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from autoprune.errors import ConfigError
from autoprune.models._user import source_file
from autoprune.search.basemodel import CACHE_NAME_CHARS, cache_path, cpu_state, save_atomic
from autoprune.search.storage import storage_fault

NET = "from torch import nn\n\n\ndef build(num_classes: int) -> nn.Module:\n    return nn.Linear(64, num_classes)\n"
MODULE = "autoprune_test_cache_net"
DEEP_STEM = "a_deeply_nested_folder_with_a_space_and_colon_net.py_build"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, holding ``nets/net.py`` and the module ``MODULE`` (importable)."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "net.py").write_text(NET, encoding="utf-8")
    (tmp_path / f"{MODULE}.py").write_text(NET, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(MODULE, None)


@pytest.mark.parametrize(
    ("override", "source"),
    [
        ("model.name='nets/net.py:build'", "nets/net.py"),
        (f"model.name='{MODULE}:build'", f"{MODULE}.py"),
        ("data.name='nets/net.py:build'", "nets/net.py"),  # a user dataset's code is keyed too
    ],
)
def test_editing_the_users_file_changes_the_cache_path(project: Path, override: str, source: str) -> None:
    config = tiny_config(project / "runs", "cache", override)
    before = cache_path(config)
    assert cache_path(config) == before
    (project / source).write_text(NET.replace("64", "32"), encoding="utf-8")
    assert cache_path(config) != before


def test_cache_file_names_are_flat_and_safe(project: Path) -> None:
    deep = project / "a" / "deeply" / "nested" / "folder" / "with a space" / "and:colon"
    deep.mkdir(parents=True)
    (deep / "net.py").write_text(NET, encoding="utf-8")
    assert len(DEEP_STEM) > CACHE_NAME_CHARS  # its name is cut to its tail
    for name, stem in [
        ("nets/net.py:build", "nets_net.py_build"),
        (f"{MODULE}:build", f"{MODULE}_build"),
        ("torchvision:resnet18", "torchvision_resnet18"),
        ("digits_resnet", "digits_resnet"),
        (f"{deep.relative_to(project)}/net.py:build", DEEP_STEM[-CACHE_NAME_CHARS:]),
    ]:
        path = cache_path(tiny_config(project / "runs", "cache", f"model.name='{name}'"))
        assert path.parent == project / "runs" / "cache"
        assert re.fullmatch(rf"base-{re.escape(stem)}-[0-9a-f]{{12}}\.pt", path.name), path.name


def test_source_file(project: Path) -> None:
    assert source_file("nets/net.py:build", "model") == project / "nets" / "net.py"
    assert source_file(f"{MODULE}:build", "model") == project / f"{MODULE}.py"
    assert source_file("digits_resnet", "model") is None
    assert source_file("torchvision:resnet18", "model") is None
    with pytest.raises(ConfigError, match=r"model 'nets/gone.py:build': file not found: .*nets/gone.py$"):
        source_file("nets/gone.py:build", "model")


def test_save_atomic_leaves_nothing_when_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache" / "base.pt"
    target.parent.mkdir()
    target.write_bytes(b"the previous file")

    def disk_full(obj: object, file: Path) -> None:
        Path(file).write_bytes(b"half a state_dict")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError) as caught:
        save_atomic({"w": torch.zeros(2)}, target)
    assert caught.value.errno == errno.ENOSPC
    assert [p.name for p in target.parent.iterdir()] == ["base.pt"]
    assert target.read_bytes() == b"the previous file"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs, where one is allowed to be mounted (root on Linux)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:  # lazy: torch's failed writer may still hold its file open until collected
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_save_atomic_on_a_really_full_disk_raises_enospc_and_leaves_nothing(full_disk: Path) -> None:
    with pytest.raises(OSError) as caught:  # torch itself raises RuntimeError('unexpected pos ...')
        save_atomic({"w": torch.zeros(200_000)}, full_disk / "base.pt")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(full_disk / "base.pt")
    assert list(full_disk.iterdir()) == []
    assert "base.pt" in str(storage_fault(caught.value))


def test_saved_weights_keep_the_layers_versions_that_some_models_need_to_load(tmp_path: Path) -> None:
    from autoprune.models import build_model

    model = build_model("torchvision:mnasnet0_5", num_classes=10, in_channels=1, image_size=32)
    save_atomic(cpu_state(model), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    fresh = build_model("torchvision:mnasnet0_5", num_classes=10, in_channels=1, image_size=32)
    fresh.load_state_dict(state)  # without _metadata: ValueError "version should be set to 1 or 2"
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
