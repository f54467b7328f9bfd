"""Guarded resumes: what a ``--resume`` may change, and the record of what it changed.

A run resumed with ``--resume RUN_DIR`` continues the experiment recorded in ``RUN_DIR/config.yaml``.
Settings that define the model, the data or the randomness (every key but :data:`FREE_KEYS`:
model.*, data.name/root/subsets/augment, train.seed, train.batch_size) cannot change on a resume unless the user names them with ``--allow-change KEY``
(a key or a section, repeatable): otherwise the resume exits 2 naming each changed key with its
old and new value. Keys in :data:`FREE_KEYS` (how long, how often to evaluate and log, where and
with how many workers it runs, the optimiser's settings) may change freely; every change is recorded.

Every resume is appended to the ``resumes:`` list at the end of ``config.yaml``::

    resumes:
    - time: '2026-12-02T04:50:00+00:00'
      after_epoch: 3                 # epochs 1..3 ran with the old values below
      changed: {train.epochs: {old: 3, new: 10}, model.steps: {old: 2, new: 6}}
      allowed: [model.steps]

so the settings of every epoch can be reconstructed from the sections above the list (the newest
settings) by undoing the changes newest first (:func:`settings_before`).
"""
from __future__ import annotations

import datetime
from typing import Mapping, Optional, Sequence

import yaml

from .config import Config, ConfigError, _leaf_keys, _sections, config_to_dict, dump_config, yaml_text

__all__ = ["FREE_KEYS", "FIXED_BY_CHECKPOINT", "free_keys", "check_allowed_keys", "changes", "guard_resume", "config_yaml",
           "settings_before", "check_resumes_value", "check_checkpoint", "RESUMES_KEY"]

RESUMES_KEY = "resumes"

#: keys (or whole sections, ending in '.') a resume may change without --allow-change: they do not define the model,
#: the data or the randomness, only how long the run goes, how often it evaluates and logs, and where it runs.
#: The optimiser section may change (a hand-lowered lr is a common, deliberate step), and the change is recorded.
FREE_KEYS = ("train.epochs", "train.eval_every", "train.device", "train.micro_batches", "train.amp", "data.workers",
             "data.download", "optim.", "log.")


def _matches(key: str, pattern: str) -> bool:
    """``key`` is ``pattern`` or lies below it (``model`` and ``model.`` cover ``model.steps``)."""
    p = pattern.rstrip(".")
    return key == p or key.startswith(p + ".")


#: free by the rule above but refused when the checkpoint is restored: the optimiser's saved state belongs to it
FIXED_BY_CHECKPOINT = ("optim.name",)


def free_keys() -> list[str]:
    """The leaf config keys a resume may change (for --help)."""
    return [k for k in _leaf_keys() if any(_matches(k, f) for f in FREE_KEYS) and k not in FIXED_BY_CHECKPOINT]


def check_allowed_keys(keys: Sequence[str]) -> None:
    """ConfigError unless every ``--allow-change`` KEY names a config key or section."""
    valid = _leaf_keys()
    sections = list(_sections())
    for k in keys:
        if k in sections or k in valid or k.startswith("model.options.") or any(v.startswith(k + ".") for v in valid):
            continue
        raise ConfigError(f"--allow-change {k}: not a config key; allowed: a key or section of --help's list "
                          f"(e.g. model.steps, model, train.seed)")


UNSET = "<unset>"


def _diff(a, b, prefix: str, out: dict) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k, UNSET), b.get(k, UNSET), f"{prefix}{k}.", out)
    elif a != b:
        out[prefix[:-1]] = (a, b)


def changes(old: Config, new: Config) -> dict[str, tuple]:
    """``{key: (old, new)}`` for every config key whose value differs (out_dir excluded: a resume stays put).
    Mappings are compared key by key; where one side is a mapping and the other is not (``model.grad: null``
    -> ``{mode: backsolve}``), the key is reported whole. A key present on one side only has the value '<unset>'
    on the other."""
    a, b = config_to_dict(old), config_to_dict(new)
    a.pop("out_dir", None)
    b.pop("out_dir", None)
    out: dict = {}
    _diff(a, b, "", out)
    return out


def guard_resume(old: Config, new: Config, allowed: Sequence[str], run_dir: str) -> dict:
    """The record of this resume's changes; ConfigError naming every guarded key changed without --allow-change."""
    check_allowed_keys(allowed)
    diff = changes(old, new)
    refused = {k: v for k, v in diff.items()
               if not any(_matches(k, f) for f in FREE_KEYS) and not any(_matches(k, a) for a in allowed)}
    if refused:
        what = ", ".join(f"{k}: {yaml_text(o)} -> {yaml_text(n)}" for k, (o, n) in refused.items())
        flags = " ".join(f"--allow-change {k}" for k in refused)
        raise ConfigError(f"--resume {run_dir} would change settings that define the model, the data or the "
                          f"randomness of the run ({what}); allowed on a resume: {', '.join(k + '*' if k.endswith('.') else k for k in FREE_KEYS)} "
                          f"(see --help); to change them anyway, add {flags}")
    unused = [a for a in allowed if not any(_matches(k, a) for k in diff)]
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "after_epoch": None,
            "changed": {k: {"old": o, "new": n} for k, (o, n) in diff.items()},
            "allowed": list(allowed), **({"allowed_but_unchanged": unused} if unused else {})}


def config_yaml(cfg: Config, resumes: Optional[list], epoch: int) -> str:
    """The text of config.yaml: the resolved config, then the ``resumes:`` list (the newest entry's
    ``after_epoch`` filled in with ``epoch``, the epochs run before this resume)."""
    text = dump_config(cfg)
    if not resumes:
        return text
    resumes = [dict(r) for r in resumes]
    if resumes[-1].get("after_epoch") is None:
        resumes[-1]["after_epoch"] = epoch
    return text + yaml.safe_dump({RESUMES_KEY: resumes}, sort_keys=False, width=10**6)


def settings_before(current: Mapping, resumes: Sequence[Mapping], index: int) -> dict:
    """The settings (nested, as config.yaml's sections) in force before resume number ``index`` (0 = the run's
    start): ``current`` with the changes of resumes ``index``.. undone, newest first."""
    import copy
    tree = copy.deepcopy({k: v for k, v in current.items() if k != RESUMES_KEY})
    for r in reversed(list(resumes)[index:]):
        for key, ch in (r.get("changed") or {}).items():
            *parents, leaf = key.split(".")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            if ch["old"] == UNSET:
                node.pop(leaf, None)
            else:
                node[leaf] = copy.deepcopy(ch["old"])
    return tree


def check_resumes_value(value) -> None:
    """ConfigError unless ``value`` looks like a ``resumes:`` list written by :func:`config_yaml`."""
    if not isinstance(value, list) or not all(isinstance(r, Mapping) and "changed" in r for r in value):
        raise ConfigError(f"{RESUMES_KEY}={yaml_text(value)} is not allowed; allowed: the list of resume records "
                          f"train_coupled.py writes to a run's config.yaml")


#: what a checkpoint must hold for a resume: key -> (check, what is allowed)
_CHECKPOINT_KEYS = {
    "epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "model": (lambda v: isinstance(v, Mapping), "the model's state dict"),
    "optimizer": (lambda v: isinstance(v, Mapping), "the optimiser's state dict"),
    "rng": (lambda v: isinstance(v, Mapping) and {"python", "numpy", "torch"} <= set(v),
            "the random generators' states {python, numpy, torch, cuda}"),
    "config": (lambda v: isinstance(v, Mapping) and isinstance(v.get("optim"), Mapping) and "name" in v["optim"],
               "the run's resolved config (a mapping with optim.name)"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, Mapping) for r in v),
                "the list of per-epoch metric records"),
    "optimizer_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "best_test_acc": (lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool),
                      "a number or null"),
}


def check_checkpoint(ck: Mapping, path) -> None:
    """CheckpointError naming the first missing or malformed key of a checkpoint read for a resume (a hand-made or
    foreign file whose checksum verifies but that train_coupled.py did not write)."""
    from .run_files import CheckpointError
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{path} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                              f"allowed: a checkpoint written by train_coupled.py (keys {', '.join(_CHECKPOINT_KEYS)})")
    for k, (ok, what) in _CHECKPOINT_KEYS.items():
        if not ok(ck[k]):
            raise CheckpointError(f"{path}: key {k} holds {type(ck[k]).__name__} {str(ck[k])[:60]!r}; "
                                  f"allowed: {what}")
    if len(ck["history"]) != ck["epoch"]:
        raise CheckpointError(f"{path}: key history has {len(ck['history'])} records for epoch {ck['epoch']}; "
                              f"allowed: one record per epoch run")
