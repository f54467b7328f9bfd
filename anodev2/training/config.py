"""Typed, validated experiment configuration for ``train_coupled.py``.

A config is a YAML file (read with ``yaml.safe_load``) with the sections

    data:   which data set, where it lives, subsets, augmentation, loader workers
    model:  network name and variant, ODE solver (steps, method), gradient mode
            (``grad: {mode: checkpoint, checkpoints: 2}``), weight evolution (ANODEV2, arXiv
            1906.04596: ``evolution: {kind: rda, a_max: 0.25}``) and extra build options
    optim:  SGD (momentum, nesterov) or Adam; lr, weight decay, multistep/cosine schedule
    train:  epochs, batch size, seed, device, evaluation period, mixed precision
    log:    TensorBoard / weight-evolution logging options
    out_dir: where logs, metrics and checkpoints of the run go

An optional top-level ``base: NAME_OR_PATH`` inherits another config (deep merge,
this file wins). Every key is validated against the frozen dataclasses below;
unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key, the value and what is allowed. Dotted ``key=value`` overrides
(``train.epochs=1``, ``model.grad.checkpoints=2``) are parsed with ``yaml.safe_load`` and
validated the same way.

``model.grad`` and ``model.evolution`` are read by the engine's own resolvers
(:func:`anodev2.adjoint.get_grad_mode` through :func:`anodev2.models.resolve_grad`, and
:func:`anodev2.models.resolve_variant_evolution`): ``model.grad`` becomes the gradient-mode
object itself (``anodev2.Checkpoint(checkpoints=2)``), which ``models.build`` hands unchanged
to every ODE block and the block to ``odeint``; ``model.evolution`` becomes the validated
mapping ``{kind, **entries}`` that each ODE block builds its evolution from. Either may be a
plain name (``grad: backprop``, ``evolution: rda``), a mapping, or null (the variant's default);
a mapping without ``mode`` / ``kind`` adjusts the variant's default. The flat keys of earlier
versions (:data:`MOVED_KEYS`) are an error naming the new spelling.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import yaml

__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "LogConfig", "Config",
    "CONFIG_DIR", "available_configs", "find_config", "load_config", "parse_overrides",
    "config_from_dict", "config_to_dict", "dump_config", "describe_keys", "merge_raw", "yaml_text", "MOVED_KEYS",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad config file, key or value; the message is meant for the user as is."""


# ----------------------------------------------------------------------------- choices
# Choices that belong to other parts of the library are read from there lazily,
# so a new model, solver or evolution operator is accepted without touching this file.

def _model_names() -> tuple:
    from anodev2 import models
    return tuple(sorted(models.MODELS))


def _variants() -> tuple:
    from anodev2 import models
    return tuple(models.VARIANTS)


def _methods() -> tuple:
    from anodev2.solvers import TABLEAUX
    return tuple(TABLEAUX)


def _norms() -> tuple:
    from anodev2 import models
    return tuple(models.NORMS)


def _datasets() -> tuple:
    from .datasets import DATASETS
    return tuple(DATASETS)


def _optimizers() -> tuple:
    from .optim import OPTIMIZERS
    return tuple(OPTIMIZERS)


def _schedules() -> tuple:
    from .optim import SCHEDULES
    return tuple(SCHEDULES)


def _opt(default, help: str, choices: Union[Sequence, Callable[[], Sequence], None] = None,
         min=None, max=None, min_open: bool = False, max_open: bool = False, resolve: Optional[Callable] = None):
    """A dataclass field with validation metadata (choices, range) and a help text. ``resolve(key, value,
    section)`` (for values the engine reads itself) replaces the type check; ``section`` holds the
    section's other (already checked) values."""
    meta = dict(help=help, choices=choices, min=min, max=max, min_open=min_open, max_open=max_open, resolve=resolve)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- engine-resolved values

#: flat keys of earlier versions -> where they live now (one clear error, in YAML and in overrides).
MOVED_KEYS: dict[str, str] = {
    "model.checkpoints": "model.grad.checkpoints",
    "model.keep_forward": "model.grad.keep_forward",
    "model.evolution_targets": "model.evolution.targets",
}
#: values that are a name or a mapping: the mapping key a bare name stands for (``grad: backprop``
#: is ``grad: {mode: backprop}``), so that a dotted override can refine a name given in a file.
_NAMED_MAPPINGS: dict[tuple[str, ...], str] = {("model", "grad"): "mode", ("model", "evolution"): "kind"}


def _variant_of(section: Mapping) -> str:
    return section.get("variant", ModelConfig.__dataclass_fields__["variant"].default)


def _resolve_grad(key: str, value, section: Mapping):
    """``model.grad`` -> None (the variant's default) or the gradient-mode object."""
    if value is None:
        return None
    from anodev2 import models
    try:
        return models.resolve_grad(_variant_of(section), value, where=key)
    except (TypeError, ValueError) as e:
        raise ConfigError(_switch_hint(str(e), key, value, "mode")) from None


def _resolve_evolution(key: str, value, section: Mapping):
    """``model.evolution`` -> None (the variant's default) or the validated mapping ``{kind, **entries}``."""
    if value is None:
        return None
    from anodev2 import models
    if isinstance(value, Mapping) and isinstance(value.get("targets"), list):
        value = {**value, "targets": tuple(value["targets"])}  # frozen config: no list inside
    try:
        spec = models.resolve_variant_evolution(_variant_of(section), value, where=key)
    except (TypeError, ValueError) as e:
        raise ConfigError(_switch_hint(str(e), key, value, "kind")) from None
    return spec


def _switch_hint(message: str, key: str, value, name_key: str) -> str:
    """``message`` + how to switch mode / kind when a mapping kept options of the previous one (a dotted
    ``model.grad.mode=backprop`` over a file's ``{mode: checkpoint, checkpoints: 2}`` merges key by key)."""
    if isinstance(value, Mapping) and len(value) > 1 and " is not an option of " in message:
        return (f"{message} (to switch {name_key}, give the whole value: {key}={value.get(name_key, 'NAME')} "
                f"or {key}={{{name_key}: ..., OPTION: VALUE}})")
    return message


def _resolve_amp(key: str, value):
    """``train.amp`` -> False (float32) | True (CUDA float16 autocast + GradScaler; also spelled
    ``fp16``) | ``"bf16"`` (bfloat16 autocast on CPU or CUDA, no scaler: bfloat16 has float32's range)."""
    if value is False or value in ("off", "false", "fp32", "float32"):
        return False
    if value is True or value in ("fp16", "float16", "true"):
        return True
    if value in ("bf16", "bfloat16"):
        return "bf16"
    raise ConfigError(f"{key}={value!r} is not allowed; allowed: false | true (= fp16: CUDA float16 autocast + "
                      "GradScaler) | bf16 (bfloat16 autocast, CPU or CUDA)")


def _moved(key: str) -> ConfigError:
    new = MOVED_KEYS[key]
    section, _, leaf = new.rpartition(".")
    return ConfigError(f"{key} has moved: write {new} (in YAML: {section.replace('.', ': {')}: {{{leaf}: ...}}"
                       f"{'}' * section.count('.')}); the old flat key is no longer read")


# ----------------------------------------------------------------------------- sections

@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("cifar10", "data set", choices=_datasets)
    root: Optional[str] = _opt(None, "data directory; null = $ANODEV2_DATA or ./data")
    subset_train: Optional[int] = _opt(None, "use this many training images (seeded choice); null = all", min=1)
    subset_test: Optional[int] = _opt(None, "use this many test images (seeded choice); null = all", min=1)
    augment: bool = _opt(True, "random crop (padding 4) + horizontal flip (flip not for mnist)")
    workers: int = _opt(0, "DataLoader worker processes preparing batches; 0 = main process", min=0)
    download: bool = _opt(True, "try a torchvision download when the data is not found in root")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("resnet10", "network in anodev2.models.MODELS", choices=_model_names)
    variant: str = _opt("anodev2", "baseline (discrete ResNet) | neuralode | anode | anodev2", choices=_variants)
    steps: Optional[int] = _opt(None, "time steps Nt per ODE block; null = variant default (3)", min=1)
    method: Optional[str] = _opt(None, "explicit Runge-Kutta method; null = variant default (euler)",
                                 choices=_methods)
    grad: Any = _opt(None, "gradient mode: a name or {mode: NAME, OPTION: VALUE} (keys below); null = variant "
                           "default (checkpoint; backsolve for neuralode); without mode: adjusts the variant's",
                     resolve=_resolve_grad)
    evolution: Any = _opt(None, "weight evolution q: a kind or {kind: NAME, targets: [...], OPTION: VALUE} (keys "
                                "below); null = variant default (rda for anodev2, none otherwise); without kind: "
                                "adjusts the variant's", resolve=_resolve_evolution)
    width: float = _opt(1.0, "channel multiplier (small values give tiny test networks)", min=0.0, min_open=True)
    norm: str = _opt("batch", "normalisation layers", choices=_norms)
    options: dict[str, Any] = _opt({}, "further keyword options for anodev2.models.build")

    def build_options(self) -> dict:
        """Keyword options for ``anodev2.models.build``: every field named in ``anodev2.models.ODE_OPTIONS`` or
        ``COMMON_OPTIONS`` whose value differs from its default (null / 1.0 / "batch" defer to the
        variant's defaults; ODE options are an error for baseline), then ``options``. ``grad`` is the
        gradient-mode object itself, passed on unchanged."""
        from anodev2 import models
        fields = {f.name: f for f in dataclasses.fields(self)}
        opts = {}
        for k in (*models.ODE_OPTIONS, *models.COMMON_OPTIONS):
            if k in fields and getattr(self, k) != fields[k].default:
                value = getattr(self, k)
                opts[k] = list(value) if isinstance(value, tuple) else value
        return {**opts, **self.options}


@dataclass(frozen=True)
class OptimConfig:
    name: str = _opt("sgd", "optimizer", choices=_optimizers)
    lr: float = _opt(0.1, "base learning rate", min=0.0, min_open=True)
    momentum: float = _opt(0.9, "SGD momentum", min=0.0, max=1.0, max_open=True)
    nesterov: bool = _opt(False, "SGD Nesterov momentum")
    weight_decay: float = _opt(5e-4, "L2 weight decay of the network parameters", min=0.0)
    evolution_lr_mult: float = _opt(1.0, "lr multiplier of the weight-evolution coefficients (their own param group)",
                                    min=0.0, min_open=True)
    evolution_weight_decay: float = _opt(0.0, "L2 weight decay of the weight-evolution coefficients", min=0.0)
    schedule: str = _opt("multistep", "learning-rate schedule (per epoch)", choices=_schedules)
    milestones: list[int] = _opt([150, 250], "multistep: epochs at which lr is multiplied by gamma", min=1)
    gamma: float = _opt(0.1, "multistep: lr factor at each milestone", min=0.0, max=1.0, min_open=True)
    warmup_epochs: int = _opt(0, "linear warm-up epochs before the schedule", min=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _opt(350, "number of epochs", min=1)
    batch_size: int = _opt(128, "images per optimizer step per process", min=1)
    seed: int = _opt(0, "seed of initialisation, subsets, data order and augmentation", min=0,
                     max=2**63 - 1)  # a signed 64-bit value (torch.manual_seed overflows past 2**64 - 1)
    device: str = _opt("auto", "auto = cuda when available", choices=("auto", "cpu", "cuda"))
    eval_every: int = _opt(1, "evaluate on the test set every this many epochs (and after the last)", min=1)
    micro_batches: int = _opt(1, "split each batch into this many interleaved micro-batches (x[i::n]) whose "
                                 "gradients are accumulated: less memory, same step (as DDP's ranks)", min=1)
    amp: Any = _opt(False, "mixed precision: false = float32; true (= fp16) = CUDA float16 autocast + GradScaler; "
                           "bf16 = bfloat16 autocast on CPU or CUDA (no scaler)",
                    choices=("false", "true", "fp16", "bf16"), resolve=lambda key, value, section: _resolve_amp(key, value))


@dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = _opt(True, "write TensorBoard event files to out_dir")
    evolution_every: int = _opt(1, "log weight-evolution views every this many epochs; 0 = never", min=0)
    evolution_batch: int = _opt(8, "images in the fixed batch that populates weights_at()", min=1)
    max_kernels: int = _opt(16, "kernels shown per weight in the kernel image grids", min=1)
    progress: bool = _opt(True, "progress of training and evaluation (rank 0): tqdm on a terminal, else plain lines")
    progress_interval: float = _opt(30.0, "seconds between plain progress lines (also one every 10 % of a pass)",
                                    min=0.0, min_open=True)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    out_dir: str = _opt("runs/{config}", "run directory; '{config}' is replaced by the config name")


def _sections() -> dict:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _leaf_keys() -> list[str]:
    keys = []
    for name, cls in _sections().items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    keys += [f.name for f in dataclasses.fields(Config) if f.name not in _sections()]
    return keys


# ----------------------------------------------------------------------------- validation

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(_type_name(a) for a in args) + " | null"
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return {int: "integer", float: "number", bool: "true/false", str: "string"}.get(tp, str(tp))


def _describe_allowed(tp, meta) -> str:
    parts = [_type_name(tp)]
    choices = meta.get("choices")
    if choices is not None:
        parts = [" | ".join(map(str, _choices(choices)))]
        if typing.get_origin(tp) is Union:
            parts[0] += " | null"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None or hi is not None:
        rng = []
        if lo is not None:
            rng.append(f"{'>' if meta.get('min_open') else '>='} {lo}")
        if hi is not None:
            rng.append(f"{'<' if meta.get('max_open') else '<='} {hi}")
        parts.append(" and ".join(rng))
    return ", ".join(parts)


def _choices(choices) -> tuple:
    return tuple(choices() if callable(choices) else choices)


def yaml_text(value) -> str:
    """``value`` as a user writes it: YAML spelling (true, null, [1, 2]); strings quoted as 'text'."""
    if isinstance(value, str):
        return repr(value)
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        return repr(value)


def _coerce(key: str, value, tp, meta):
    """Return ``value`` converted to type ``tp`` or raise ConfigError."""
    def bad(extra: str = ""):
        return ConfigError(f"{key}={yaml_text(value)} is not allowed{extra}; allowed: {_describe_allowed(tp, meta)}")

    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0], meta)
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad()
        return tuple(_coerce(f"{key}[{i}]", v, inner, meta) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        if not all(isinstance(k, str) for k in value):
            raise bad(" (keys must be strings)")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad()
    elif tp is str:
        if not isinstance(value, str):
            raise bad()
    choices = meta.get("choices")
    if choices is not None and value not in _choices(choices):
        raise bad()
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_open") and value == lo)):
        raise bad()
    if hi is not None and (value > hi or (meta.get("max_open") and value == hi)):
        raise bad()
    return value


def _unknown(key: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _build_section(cls, raw, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix} must be a mapping of keys, got {yaml_text(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        if f"{prefix}.{k}" in MOVED_KEYS:
            raise _moved(f"{prefix}.{k}")
        if k not in fields:
            raise _unknown(f"{prefix}.{k}", _leaf_keys())
        if fields[k].metadata.get("resolve") is None:
            kwargs[k] = _coerce(f"{prefix}.{k}", v, hints[k], fields[k].metadata)
    for k, v in raw.items():  # values the engine resolves, after the values they depend on
        resolve = fields[k].metadata.get("resolve")
        if resolve is not None:
            kwargs[k] = resolve(f"{prefix}.{k}", v, kwargs)
    return cls(**kwargs)


def config_from_dict(raw: Mapping, name: str = "config") -> Config:
    """Validate a plain dict (as from YAML) into a :class:`Config`. ``name`` fills '{config}' in out_dir."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    sections = _sections()
    kwargs = {}
    for k, v in raw.items():
        if k in sections:
            kwargs[k] = _build_section(sections[k], v, k)
        elif k == "out_dir":
            out = _coerce("out_dir", v, str, {})
            kwargs[k] = out.replace("{config}", name)
        elif k == "resumes":  # a run's config.yaml: the record of its resumes (resume_guard.py), not a setting
            from .resume_guard import check_resumes_value
            check_resumes_value(v)
        else:
            raise _unknown(str(k), list(sections) + ["out_dir"] + _leaf_keys())
    kwargs.setdefault("out_dir", Config.__dataclass_fields__["out_dir"].default.replace("{config}", name))
    cfg = Config(**kwargs)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: Config) -> None:
    from anodev2.models import ODE_OPTIONS
    named = [k for k in cfg.model.options if k in ODE_OPTIONS]
    if named:  # model.options would silently win over the validated ODE key in build_options
        raise ConfigError(f"model.options.{named[0]} is not allowed; allowed: model.{named[0]} (model.options is for "
                          f"build options without a key of their own)")
    o = cfg.optim
    if o.name == "sgd" and o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    if list(o.milestones) != sorted(set(o.milestones)):
        raise ConfigError(f"optim.milestones={yaml_text(list(o.milestones))} is not allowed; "
                          f"allowed: strictly increasing epochs")
    if o.warmup_epochs >= cfg.train.epochs and o.warmup_epochs > 0 and o.schedule == "cosine":
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} is not allowed with schedule cosine; "
                          f"allowed: < train.epochs ({cfg.train.epochs})")


# ----------------------------------------------------------------------------- files

def available_configs() -> list[str]:
    """Names of the configs in anodev2/training/configs (without .yaml)."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: str | os.PathLike) -> Path:
    """Resolve a config: an existing path, else anodev2/training/configs/NAME[.yaml]."""
    p = Path(name_or_path)
    candidates = [p]
    if not p.is_absolute():
        candidates += [CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    avail = ", ".join(available_configs()) or "(none)"
    raise ConfigError(f"config '{name_or_path}' not found (looked for it as a path and in {CONFIG_DIR}); "
                      f"available configs: {avail}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a mapping with the same key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (line {key_node.start_mark.line + 1}); "
                                f"allowed: each key once per mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"cannot parse {path}: {msg}") from None
    except UnicodeDecodeError as e:  # binary bytes
        raise ConfigError(f"cannot read {path}: byte {e.start} is not UTF-8 text ({e.reason}); "
                          f"allowed: a UTF-8 YAML text file") from None
    except RecursionError:  # e.g. 20,000 nested '['
        raise ConfigError(f"cannot parse {path}: its YAML nests too deeply for the parser; "
                          f"allowed: a config of sections and values (a few levels deep)") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    if raw is None:
        raise ConfigError(f"{path} is an empty config; allowed: a mapping of sections (data, model, optim, "
                          f"train, log, out_dir) or 'base: NAME' to start from another config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def merge_raw(base: dict, top: Mapping, _path: tuple = ()) -> dict:
    """``base`` updated by ``top``: mappings merge key by key (``model.options`` is replaced whole); a
    mapping merged into a bare name of ``model.grad`` / ``model.evolution`` refines that name
    (``grad: checkpoint`` + ``{checkpoints: 2}`` = ``{mode: checkpoint, checkpoints: 2}``)."""
    out = dict(base)
    for k, v in top.items():
        path, old = _path + (k,), out.get(k)
        if path in _NAMED_MAPPINGS and isinstance(v, Mapping) and isinstance(old, str):
            old = {_NAMED_MAPPINGS[path]: old}
        if isinstance(v, Mapping) and isinstance(old, Mapping) and k != "options":
            out[k] = merge_raw(old, v, path)
        else:
            out[k] = v
    return out


def load_raw(name_or_path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """The merged plain dict of a config file, following ``base:`` links."""
    path = find_config(name_or_path).resolve()
    if path in _seen:
        raise ConfigError(f"config 'base' links form a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"base={yaml_text(base)} in {path} is not allowed; allowed: a config name or path")
    if not Path(base).is_absolute() and (path.parent / base).is_file():
        base = str(path.parent / base)
    return merge_raw(load_raw(base, _seen + (path,)), raw)


def parse_overrides(items: Sequence[str]) -> dict:
    """``['train.epochs=1', 'model.options.width=4']`` -> nested dict (values via yaml.safe_load)."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not allowed; allowed: KEY=VALUE, e.g. train.epochs=1")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        except RecursionError:
            raise ConfigError(f"override '{key}=...' nests too deeply for the YAML parser; allowed: a value "
                              f"a few levels deep, e.g. optim.milestones=[100,150]") from None
        parts = key.split(".")
        if any(not p for p in parts):
            raise ConfigError(f"override key '{key}' is not allowed; allowed: dotted keys such as train.epochs")
        _check_override_key(key)
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{p}'")
            node = nxt
        node[parts[-1]] = value
    return out


def _check_override_key(key: str) -> None:
    if key in MOVED_KEYS:
        raise _moved(key)
    valid = _leaf_keys()
    if key in valid or key in _sections():
        return
    if key.startswith("model.options."):
        return
    nested = _nested_keys()
    if key in nested:
        return
    raise _unknown(key, valid + list(nested))


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[str] = (), name: str | None = None) -> Config:
    """Read, merge (``base:``), override and validate a config. Raises ConfigError."""
    raw = merge_raw(load_raw(name_or_path), parse_overrides(overrides))
    return config_from_dict(raw, name=name or find_config(name_or_path).stem)


# ----------------------------------------------------------------------------- output

def _plain(value):
    from anodev2.adjoint import GradMode
    if isinstance(value, GradMode):
        return value.as_dict()
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists, not tuples) that :func:`config_from_dict` reads back to ``cfg``."""
    return _plain(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _flow(value) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True).strip().removesuffix('...').strip()


def _grad_keys() -> tuple[str, list[tuple[str, str, str, str]]]:
    """(allowed values of model.grad, [(key, default, allowed, help)] of its nested keys), from the
    gradient-mode registry."""
    from anodev2.adjoint import GRAD_MODES
    modes = " | ".join(GRAD_MODES)
    rows = [("model.grad.mode", "(variant's)", modes, "the gradient mode (options below name their mode)")]
    for name, cls in GRAD_MODES.items():
        rows += [(f"model.grad.{opt}", _flow(spec.default), spec.allowed, f"({name}) {spec.help}")
                 for opt, spec in cls.option_specs().items()]
    return f"null | {modes} | {{mode: NAME, OPTION: VALUE}}", rows


def _option_allowed(opt) -> str:
    if opt.choices:
        return " | ".join(map(str, opt.choices))
    kind = {int: "integer", float: "number", str: "string"}.get(opt.type, opt.type.__name__)
    bounds = [f">= {opt.low}"] if opt.low is not None else []
    bounds += [f"<= {opt.high}"] if opt.high is not None else []
    return " ".join([kind, " and ".join(bounds)]).strip()


def _evolution_keys() -> tuple[str, list[tuple[str, str, str, str]]]:
    """(allowed values of model.evolution, [(key, default, allowed, help)] of its nested keys), from the
    evolution registry (``anodev2.evolution.EVOLUTIONS``): each option once, with its default per kind."""
    from anodev2.evolution import EVOLUTIONS
    kinds = " | ".join(EVOLUTIONS)
    every_conv = [k for k, spec in EVOLUTIONS.items() if spec.targets != "spatial"]
    rows = [("model.evolution.kind", "(variant's)", kinds, "the weight family, one of:\n" + "\n".join(
                f"{k}: {spec.summary}" for k, spec in EVOLUTIONS.items())),
            ("model.evolution.targets", "null", "null | a parameter name or pattern | list of them",
             "parameters of each ODE block's f that evolve (relative to f; fnmatch patterns); null = the kind's "
             "default: conv weights with a spatial kernel" + (f" (every conv weight for {', '.join(every_conv)})"
                                                              if every_conv else ""))]
    by_option: dict[str, list] = {}
    for kind, spec in EVOLUTIONS.items():
        for name, opt in spec.options.items():
            by_option.setdefault(name, []).append((kind, opt))
    for name, entries in by_option.items():
        defaults = {}
        for kind, opt in entries:
            defaults.setdefault(_flow(opt.default), []).append(kind)
        default = ", ".join(f"{d} ({', '.join(ks)})" for d, ks in defaults.items())
        allowed = " ; ".join(dict.fromkeys(_option_allowed(opt) for _, opt in entries))
        rows.append((f"model.evolution.{name}", default, allowed, entries[0][1].description))
    return f"null | {kinds} | {{kind: NAME, targets: [...], OPTION: VALUE}}", rows


def _nested_keys() -> dict[str, tuple[str, str, str]]:
    """Every key below model.grad / model.evolution -> (default, allowed, help)."""
    out = {}
    for describe in (_grad_keys, _evolution_keys):
        out.update({key: rest for key, *rest in describe()[1]})
    return out


def describe_keys() -> str:
    """One line per config key, nested keys of model.grad / model.evolution included: dotted name, default,
    allowed values, help (for --help)."""
    nested = {"model.grad": _grad_keys, "model.evolution": _evolution_keys}
    lines = []
    for name, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows = []
            try:
                if f"{name}.{f.name}" in nested:
                    allowed, rows = nested[f"{name}.{f.name}"]()
                else:
                    allowed = _describe_allowed(hints[f.name], f.metadata)
            except Exception:  # a registry that cannot be imported yet: still show the key
                allowed = _type_name(hints[f.name])
            lines.append(f"  {name}.{f.name} = {_flow(default)}  [{allowed}]  {f.metadata.get('help', '')}")
            for key, d, a, h in rows:
                first, *more = h.split("\n")
                lines += [f"    {key} = {d}  [{a}]  {first}", *(f"        {m}" for m in more)]
    lines.append("  out_dir = runs/{config}  [string]  " + Config.__dataclass_fields__["out_dir"].metadata["help"])
    return "\n".join(lines)
