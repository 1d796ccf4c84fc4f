"""models.yaml: which models exist, where their files come from, and their defaults."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

logger = logging.getLogger(__name__)

ModelKind = Literal["chat", "transcription", "embedding"]
KINDS = ("chat", "transcription", "embedding")


class RegistryError(ValueError):
    """models.yaml is malformed."""


class SourceUnavailable(RuntimeError):
    """A model's files cannot be found or fetched."""


HUB_PROBE_SECONDS = 1.5
_hub_usable: bool | None = None


@dataclass(slots=True)
class ModelSource:
    package: str | None = None
    path: str | None = None
    hf: str | None = None
    parts: list[str] = field(default_factory=list)
    """Further pieces of a model file split across packages (`package/file` or a path),
    in order after the folder's own first piece (Whisper base's model.bin.part1 + part2)."""

    def describe(self) -> str:
        if self.package:
            return f"package:{self.package}"
        return f"path:{self.path}" if self.path else f"hf:{self.hf}"


@dataclass(slots=True)
class ModelSpec:
    id: str
    kind: ModelKind
    source: ModelSource
    aliases: list[str] = field(default_factory=list)
    context_length: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    optional: bool = False
    matryoshka: bool = False
    """Embedding models trained so that a prefix of the vector is an embedding too: only
    then may a request ask for fewer `dimensions`."""


def _package_path(ref: str) -> Path | None:
    pkg, _, rest = ref.partition("/")
    try:
        spec = importlib.util.find_spec(pkg)  # does not import the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / rest


def resolve_source(spec: ModelSpec, *, offline: bool = False) -> Path:
    """Local filesystem path of a model's file or folder, downloading from the Hub if needed."""
    src = spec.source
    if src.package:
        path = _package_path(src.package)
        if path is None or not path.exists():
            raise SourceUnavailable(
                f"model {spec.id!r}: package file {src.package!r} not installed")
        return path
    if src.path:
        path = Path(src.path).expanduser()
        if not path.exists():
            raise SourceUnavailable(f"model {spec.id!r}: {path} does not exist")
        return path
    assert src.hf is not None
    return _hf_fetch(spec.id, src.hf, offline)


def _hf_fetch(model_id: str, ref: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    parts = ref.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, local_files_only=offline))
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=offline))
    except Exception as exc:  # hub errors come in many types; all mean "not available"
        raise SourceUnavailable(f"model {model_id!r}: cannot fetch {ref!r}: {exc}") from exc


def resolve_parts(spec: ModelSpec) -> list[Path]:
    """Local paths of the source's further file pieces (`parts`), in order."""
    paths = []
    for ref in spec.source.parts:
        path = _part_path(ref)
        if path is None or not path.exists():
            raise SourceUnavailable(f"model {spec.id!r}: part {ref!r} not installed")
        paths.append(path)
    return paths


def _part_path(ref: str) -> Path | None:
    path = Path(ref).expanduser()
    return path if path.is_absolute() else _package_path(ref)


def hub_usable() -> bool:
    """Whether a Hub model not in the local cache could be fetched now: not offline, and
    the Hub answered a connection within HUB_PROBE_SECONDS (asked once per process)."""
    global _hub_usable
    if _hub_usable is None:
        from huggingface_hub import constants

        _hub_usable = not constants.HF_HUB_OFFLINE and _reachable(constants.ENDPOINT)
    return _hub_usable


def _reachable(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443),
                                      timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _hf_cached(ref: str) -> bool:
    try:
        _hf_fetch("", ref, offline=True)
    except SourceUnavailable:
        return False
    return True


def source_available(spec: ModelSpec) -> bool:
    """Whether a model can be loaded here: its package or path is present, or its Hub repo
    is in the local cache or fetchable now (what /v1/models lists)."""
    src = spec.source
    if any((p := _part_path(ref)) is None or not p.exists() for ref in src.parts):
        return False
    if src.package:
        p = _package_path(src.package)
        return p is not None and p.exists()
    if src.path:
        return Path(src.path).expanduser().exists()
    assert src.hf is not None
    return _hf_cached(src.hf) or hub_usable()


@dataclass(slots=True)
class Registry:
    specs: list[ModelSpec]
    default_chat: str | None = None
    default_transcription: str | None = None
    default_embedding: str | None = None
    _names: dict[str, ModelSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for spec in self.specs:
            for name in (spec.id, *spec.aliases):
                if name in self._names:
                    raise RegistryError(f"model name {name!r} is declared twice")
                self._names[name] = spec
        self.default_chat = self.default_chat or next(
            (s.id for s in self.specs if s.kind == "chat" and source_available(s)), None)
        self.default_transcription = self.default_transcription or next(
            (s.id for s in self.specs if s.kind == "transcription" and source_available(s)), None)
        self.default_embedding = self.default_embedding or next(
            (s.id for s in self.specs if s.kind == "embedding" and source_available(s)), None)

    def get(self, name: str) -> ModelSpec | None:
        return self._names.get(name)

    def listed(self) -> list[ModelSpec]:
        """The models that can be served here."""
        return [s for s in self.specs if source_available(s)]

    @classmethod
    def from_yaml(cls, path: Path, default_chat: str | None = None,
                  default_transcription: str | None = None,
                  extra: Sequence[str] = ()) -> Registry:
        """The models of `path` (optional when `extra` names models) after the
        `extra` ones (`mlxd --model`), the first of which is then the default."""
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            if not extra:
                raise RegistryError(f"cannot read {path}: no such file") from None
            doc = {}
        except (OSError, yaml.YAMLError) as exc:
            raise RegistryError(f"cannot read {path}: {exc}") from exc
        specs = [spec_from_reference(ref) for ref in extra]
        specs += [_parse_spec(entry, i) for i, entry in enumerate(doc.get("models") or [])]
        reg = cls(specs, default_chat, default_transcription)
        for name in (default_chat, default_transcription):
            if name and reg.get(name) is None:
                raise RegistryError(f"default model {name!r} is not in {path}")
        return reg


def spec_from_reference(ref: str) -> ModelSpec:
    """A model from one `--model` argument: a GGUF file, a Hugging Face folder (a BERT-family
    folder is an embedding model, any other a chat model), or a Hub repo id (`org/name`, or
    `org/name/file.gguf`; chat). Its id is the file or repo name."""
    path = Path(ref).expanduser()
    if path.exists():
        name = path.stem if path.is_file() else path.resolve().name
        kind: ModelKind = "embedding" if _is_encoder_folder(path) else "chat"
        return ModelSpec(name, kind, ModelSource(path=str(path.resolve())))
    parts = ref.strip("/").split("/")
    if len(parts) >= 2 and all(parts) and not ref.startswith((".", "/", "~")):
        name = Path(parts[-1]).stem if len(parts) > 2 else parts[1]
        return ModelSpec(name, "chat", ModelSource(hf=ref.strip("/")), aliases=[ref])
    raise RegistryError(f"--model {ref!r}: no such file or folder, and not a Hub repo id "
                        "(org/name)")


def _is_encoder_folder(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "bert"


def _parse_spec(entry: Any, index: int) -> ModelSpec:
    if not isinstance(entry, dict) or "id" not in entry:
        raise RegistryError(f"models[{index}] needs an 'id'")
    kind = entry.get("kind", "chat")
    if kind not in KINDS:
        raise RegistryError(f"model {entry['id']!r}: kind must be one of {KINDS}")
    src = entry.get("source") or {}
    if not isinstance(src, dict) or sum(bool(src.get(k)) for k in ("package", "path", "hf")) != 1:
        raise RegistryError(f"model {entry['id']!r}: source needs exactly one of package/path/hf")
    return ModelSpec(
        id=str(entry["id"]),
        kind=kind,
        source=ModelSource(src.get("package"), src.get("path"), src.get("hf"),
                           [str(p) for p in src.get("parts") or []]),
        aliases=[str(a) for a in entry.get("aliases") or []],
        context_length=entry.get("context_length"),
        defaults=dict(entry.get("defaults") or {}),
        dtype=entry.get("dtype"),
        optional=bool(entry.get("optional", False)),
        matryoshka=bool(entry.get("matryoshka", False)),
    )
