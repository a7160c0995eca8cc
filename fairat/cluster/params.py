"""`params.yaml` knobs as Kubeflow pipeline parameters, and back.

Why a module of its own: the pipeline definition (which runs where kfp is installed) and the
components (which run in the project image) must agree on one reversible mapping, and that mapping is
pure config logic that deserves unit tests without kfp or torch.

Mapping, one knob per params leaf:
- name: the dotted key with ``.`` replaced by ``__`` (``train.attack.eps`` -> ``train__attack__eps``);
  no params key contains ``__``, so the mapping is reversible.
- kind: ``str`` (also closed ``Literal`` sets), ``int``, ``float`` and ``bool`` become typed pipeline
  parameters; nullable values and lists become ``json`` parameters, a string holding JSON
  (``"null"``, ``"16"``, ``"[0.5, 0.75]"``) because pipeline parameters cannot be null and the UI
  edits lists as text.

Components receive their knobs as text, one ``key=value`` line per knob (see :func:`knob_lines`),
because a string with embedded parameter placeholders is the one composite input every KFP backend
resolves; :func:`params_from_lines` decodes it and validates it with the same dataclasses as the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

import yaml

from fairat.config import ConfigError, Params, to_dict, with_overrides

Kind = Literal["str", "int", "float", "bool", "json"]
SEP = "__"


@dataclass(frozen=True)
class Knob:
    """One params leaf: ``key`` (dotted), pipeline parameter ``name``, ``kind`` and ``default``.

    ``default`` is the pipeline-side value: the plain value for typed kinds, JSON text for ``json``.
    """

    key: str
    name: str
    kind: Kind
    default: Any

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]


def _kind(hint: Any) -> Kind:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, tuple):
        return "json"
    if origin is Literal:
        if all(isinstance(a, str) for a in typing.get_args(hint)):
            return "str"
        return "json"
    kinds: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool"}
    if hint not in kinds:
        raise TypeError(f"no pipeline-parameter kind for type {hint!r}")
    return kinds[hint]


def _leaves(cls: type, prefix: str = "") -> Iterable[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


def _lookup(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def knobs(params: Params) -> list[Knob]:
    """Every leaf of ``params`` as a :class:`Knob`, in params-file order, defaults from ``params``."""
    tree = to_dict(params)
    out = []
    for key, hint in _leaves(Params):
        if SEP in key:
            raise ValueError(f"params key {key!r} contains {SEP!r}; the parameter mapping needs it free")
        kind = _kind(hint)
        value = _lookup(tree, key)
        out.append(Knob(key, key.replace(".", SEP), kind,
                        json.dumps(value) if kind == "json" else value))
    return out


def key_of(name: str) -> str:
    """Pipeline parameter name -> dotted params key (``train__epochs`` -> ``train.epochs``)."""
    return name.replace(SEP, ".")


def pipeline_arguments(params: Params) -> dict[str, Any]:
    """Pipeline arguments that make a run use exactly ``params`` (for ``kfp.Client`` runs)."""
    return {k.name: k.default for k in knobs(params)}


def knob_lines(values: Mapping[str, Any]) -> str:
    """``{"train.epochs": 3}`` -> ``"train.epochs=3"``: the text form components receive.

    In the pipeline definition the values are pipeline-parameter channels; their placeholders are
    substituted by the backend (or kfp.local) before the component runs.
    """
    lines = []
    for key, value in values.items():
        text = str(value)
        if "\n" in text:
            raise ConfigError(f"{key}: a pipeline value cannot contain a line break")
        lines.append(f"{key}={text}")
    return "\n".join(lines)


def _decode(kind: Kind, key: str, text: str) -> Any:
    """One substituted value back to Python; ints may arrive as ``"3.0"`` (KFP numbers are doubles)."""
    if kind == "str":
        return text
    if kind == "bool":
        if text.strip().lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true or false, got {text!r}")
        return text.strip().lower() == "true"
    if kind == "json":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: {text!r} is not valid JSON/YAML: {err}") from None
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None
    if kind == "float":
        return number
    if not math.isfinite(number) or not number.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {text!r}")
    return int(number)


def params_from_lines(text: str) -> Params:
    """Decode :func:`knob_lines` text into validated :class:`Params`.

    Knobs absent from ``text`` keep the dataclass defaults: a component receives only the sections
    its step reads, so a change elsewhere does not invalidate its cache.
    """
    kinds = {k.key: k.kind for k in knobs(Params())}
    overrides = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in kinds:
            raise ConfigError(f"pipeline params line {line!r}: expected KEY=VALUE with a known key")
        overrides[key] = _decode(kinds[key], key, value)
    return with_overrides(Params(), overrides)
