"""Checkpoint bundles: one folder, ``config.json`` plus one ``<module>.safetensors`` per module.

Layout (DESIGN "Checkpoints")::

    ckpt/
      config.json            {"format": "vidplan-checkpoint", "version": 1,
                              "modules": {"codec": {"file": "codec.safetensors", "config": {...},
                                                    "num_parameters": N, "tensors": K, "meta": {...}}, ...}}
      codec.safetensors
      world.safetensors
      flow_map.safetensors
      training/              resume state of the training stages (never needed for inference)

Every hyper-parameter a module needs to be rebuilt lives in its ``config`` entry, together with the
dataset statistics it was trained with (latent shift/scale, action percentiles, sigma_data). Nothing
is pickled. Writes are atomic (temporary file, then ``os.replace``), and ``config.json`` is updated
after the weights, so a crash leaves the previous bundle readable.

Loading validates in this order and raises :class:`CheckpointError` naming the problem: folder,
``config.json`` (JSON, format, version), the module entry, its config fields (unknown or missing),
the weights file (missing, truncated, unreadable), then the tensors (missing, unexpected, shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "vidplan-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"

#: The checkpoint shipped inside the package (see its MODEL_CARD.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "default"

C = TypeVar("C")


class CheckpointError(ValueError):
    """A checkpoint folder, its config or its weights are missing, corrupt or do not match."""


# ------------------------------------------------------------------------------- config dataclasses
def config_to_dict(config: Any) -> dict:
    """A (nested) config dataclass as plain JSON types; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict, where: str) -> C:
    """Build dataclass ``cls`` from ``data``; unknown or missing fields raise naming ``where.field``."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise CheckpointError(f"{where}: missing field {name} for {cls.__name__}")
            continue
        value = data[name]
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = config_from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: invalid {cls.__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------- manifest
def read_manifest(ckpt: str | Path) -> dict:
    """The parsed ``config.json`` of a bundle, validated for format and version."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: checkpoint folder does not exist")
    path = ckpt / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint folder needs {CONFIG_FILE})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r}"
        )
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {manifest.get('version')!r} is not supported (expected {VERSION})")
    if not isinstance(manifest.get("modules"), dict):
        raise CheckpointError(f"{path}: field modules must be an object")
    return manifest


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; bundles are read by other users and packaged
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(ckpt: Path, manifest: dict) -> None:
    _write_atomic(ckpt / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))


def module_names(ckpt: str | Path) -> list[str]:
    return sorted(read_manifest(ckpt)["modules"])


# ----------------------------------------------------------------------------------------- modules
def save_module(ckpt: str | Path, name: str, module: torch.nn.Module, config: Any, meta: dict | None = None) -> Path:
    """Write ``module``'s weights to ``<ckpt>/<name>.safetensors`` and its entry into ``config.json``.

    Other modules of the bundle are kept. Weights are stored contiguous, in their own dtype.
    """
    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    try:
        manifest = read_manifest(ckpt)
    except CheckpointError:
        if (ckpt / CONFIG_FILE).exists():
            raise
        manifest = {"format": FORMAT, "version": VERSION, "modules": {}}
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    file = f"{name}.safetensors"
    _write_atomic(ckpt / file, lambda tmp: save_file(state, tmp, metadata={"module": name}))
    manifest["modules"][name] = {
        "file": file,
        "config": config_to_dict(config),
        "num_parameters": int(sum(p.numel() for p in module.parameters())),
        "tensors": len(state),
        "meta": meta or {},
    }
    write_manifest(ckpt, manifest)
    return ckpt / file


def copy_module(src: str | Path, dst: str | Path, name: str) -> Path:
    """Copy module ``name`` (weights file and ``config.json`` entry) from bundle ``src`` into bundle ``dst``,
    replacing a module of that name there; ``dst``'s other modules are kept. Assembles a bundle from stages
    trained into separate folders (e.g. a policy trained apart from the world model)."""
    src, dst = Path(src), Path(dst)
    entry = module_entry(src, name)
    data = (src / entry["file"]).read_bytes()
    manifest = read_manifest(dst)
    _write_atomic(dst / entry["file"], lambda tmp: Path(tmp).write_bytes(data))
    manifest["modules"][name] = entry
    write_manifest(dst, manifest)
    return dst / entry["file"]


def module_entry(ckpt: str | Path, name: str) -> dict:
    manifest = read_manifest(ckpt)
    if name not in manifest["modules"]:
        have = ", ".join(sorted(manifest["modules"])) or "none"
        raise CheckpointError(f"{Path(ckpt) / CONFIG_FILE}: no module {name!r} (the bundle has: {have})")
    entry = manifest["modules"][name]
    for key in ("file", "config"):
        if key not in entry:
            raise CheckpointError(f"{Path(ckpt) / CONFIG_FILE}: modules.{name} has no field {key!r}")
    return entry


def load_config(ckpt: str | Path, name: str, cls: type[C]) -> C:
    """The config dataclass of module ``name``."""
    where = f"{Path(ckpt) / CONFIG_FILE}: modules.{name}.config"
    return config_from_dict(cls, module_entry(ckpt, name)["config"], where)


def load_weights(ckpt: str | Path, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """Load module ``name``'s weights into ``module`` (built from its config), strictly."""
    ckpt = Path(ckpt)
    entry = module_entry(ckpt, name)
    path = ckpt / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file of module {name!r} is missing")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read weights (truncated or not safetensors): {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{path}: weights do not match modules.{name}.config: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {key} has shape {tuple(state[key].shape)}, modules.{name}.config "
                f"implies {tuple(tensor.shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return module
