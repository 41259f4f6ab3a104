import json
import threading
import time
from pathlib import Path

import boto3
import pytest

from welip.models import _prepare, prepare_model, resolve_model_path


def _write_fake_model(out_dir: Path, *_: object) -> None:
    time.sleep(0.2)  # long enough for a racing caller to arrive
    (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (out_dir / "model.safetensors").write_bytes(b"weights")


@pytest.fixture
def fake_conversion(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def convert(gguf: Path, out_dir: Path, dtype: str) -> None:
        calls.append(gguf)
        _write_fake_model(out_dir)

    monkeypatch.setattr(_prepare, "_convert_gguf", convert)
    return calls


def test_packaged_model_is_located_in_its_package() -> None:
    path = _prepare._packaged_file(_prepare.PACKAGED_MODELS["smollm2-135m-instruct"])
    assert path.name.endswith(".gguf") and path.stat().st_size > 10_000_000


def test_racing_prepares_convert_once_and_leave_no_temp_dirs(
    tmp_path: Path, fake_conversion: list[Path]
) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(prepare_model("smollm2-135m-instruct", tmp_path)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_conversion) == 1
    assert len(set(results)) == 1
    target = results[0]
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["smollm2-135m-instruct"]
    # Idempotent: a later call reuses the cache.
    assert prepare_model("smollm2-135m-instruct", tmp_path) == target
    assert len(fake_conversion) == 1


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out_dir: Path, dtype: str) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(_prepare, "_convert_gguf", broken)
    with pytest.raises(RuntimeError):
        prepare_model("smollm2-135m-instruct", tmp_path)
    assert not (tmp_path / "smollm2-135m-instruct").exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_local_hf_dir_is_used_as_is(tmp_path: Path) -> None:
    _write_fake_model(tmp_path)
    assert resolve_model_path(str(tmp_path), tmp_path / "cache") == str(tmp_path)


@pytest.mark.parametrize("source", ["gpt-4o", "/nonexistent/model", "hf://org/model"])
def test_unknown_sources_are_refused_with_the_choices(source: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        resolve_model_path(source, tmp_path)


def test_s3_model_is_copied_once_into_the_cache(s3_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="tiny/config.json", Body=b'{"model_type": "llama"}')
    s3.put_object(Bucket="models", Key="tiny/model.safetensors", Body=b"weights")

    path = Path(resolve_model_path("s3://models/tiny", tmp_path))
    assert (path / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((path / "config.json").read_text()) == {"model_type": "llama"}

    s3.delete_object(Bucket="models", Key="tiny/model.safetensors")
    assert resolve_model_path("s3://models/tiny", tmp_path) == str(path)  # served from the cache


def test_s3_prefix_without_a_model_is_refused(s3_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="junk/readme.txt", Body=b"hi")
    with pytest.raises(ValueError, match=r"config\.json"):
        resolve_model_path("s3://models/junk", tmp_path)
