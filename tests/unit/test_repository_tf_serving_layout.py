"""TF Serving's model layout in the repository scan: ``<model>/<version>/saved_model.pb``, no config file."""

from __future__ import annotations

from pathlib import Path

from gateway.repository.layout import fingerprint, scan_repository, version_folder


def _saved_model(folder: Path) -> None:
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")


def test_a_tf_serving_base_path_is_an_unbatched_savedmodel(tmp_path: Path) -> None:
    for version in ("1", "00000123"):
        _saved_model(tmp_path / "half_plus_three" / version)
    (tmp_path / "half_plus_three" / "not_a_version").mkdir()
    (entry,) = scan_repository(tmp_path)
    assert entry.error is None and entry.config_path is None
    assert entry.config is not None and entry.config.platform == "savedmodel" and entry.config.max_batch_size == 0
    assert entry.versions == (123,)  # the latest, as TF Serving serves by default
    assert version_folder(entry.path, 123) == tmp_path / "half_plus_three" / "00000123"
    assert version_folder(entry.path, 1) == tmp_path / "half_plus_three" / "1"


def test_a_config_file_beside_the_layout_wins(tmp_path: Path) -> None:
    _saved_model(tmp_path / "m" / "1")
    (tmp_path / "m" / "config.yaml").write_text("platform: savedmodel\nmax_batch_size: 8\n")
    (entry,) = scan_repository(tmp_path)
    assert entry.config is not None and entry.config.max_batch_size == 8
    assert entry.config_path == tmp_path / "m" / "config.yaml"


def test_a_folder_that_is_no_model_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.savedmodel").mkdir()
    (entry,) = scan_repository(tmp_path)
    assert entry.config is None and entry.error is not None
    assert "no config.yaml or config.pbtxt" in entry.error and "saved_model.pb (TF Serving's layout)" in entry.error


def test_a_zero_padded_version_folder_is_fingerprinted(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _saved_model(folder / "00000123")
    before = fingerprint(folder, 123)
    (folder / "00000123" / "variables" / "variables.index").write_bytes(b"new weights")
    assert fingerprint(folder, 123) != before
