"""`params.yaml` knobs as Kubeflow pipeline parameters, and back.

Why a module of its own: the pipeline definition (which runs where kfp is installed) and the
components (which run in the project image) must agree on one reversible mapping, and that mapping is
pure config logic that deserves unit tests without kfp or torch.

Mapping, one knob per params leaf:
- name: the dotted key with ``.`` replaced by ``__`` (``train.attack.eps`` -> ``train__attack__eps``);
  no params key contains ``__``, so the mapping is reversible.
- kind (the pipeline parameter's type): ``str`` (also closed ``Literal`` sets), ``int``, ``float``
  and ``bool``, so the run form shows a number field for a number. Pipeline parameters cannot be
  null, so a nullable knob keeps its base type and a sentinel stands for null (:data:`NULL`):
  ``-1`` for integers and ``-1.0`` for floats (every nullable number here is a count >= 1 or a
  fraction in [0, 1], so the sentinel is never a valid value; a test checks that), and ``""`` for
  strings and for the nullable boolean (``track.register``: ``""``, ``true`` or ``false``).
  Lists stay ``json``: a string holding JSON (``"[0.5, 0.75]"``), which the run form edits as text.
- description: the knob's end-of-line comment in ``params.yaml`` (:func:`yaml_comments`), plus what
  the sentinel means and the allowed names; a knob without a comment is described by its key.

Components receive their knobs as text, one ``key=value`` line per knob (see :func:`knob_lines`),
because a string with embedded parameter placeholders is the one composite input every KFP backend
resolves; :func:`params_from_lines` decodes it (sentinels back to None) and validates it with the
same dataclasses as the CLI.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import yaml

from fairat.config import ConfigError, Params, leaves, to_dict, with_overrides

Kind = Literal["str", "int", "float", "bool", "json"]
SEP = "__"
# The pipeline value that stands for null, by the knob's base type (see the module docstring).
NULL: dict[str, Any] = {"int": -1, "float": -1.0, "str": "", "bool": ""}
# What null means, for the description of every nullable knob (a test checks none is missing).
NULL_MEANS = {
    "data.train_per_class": "all of them", "data.test_per_class": "all of them",
    "model.width": "the architecture's default: small_cnn 32, preact_resnet18 64, wrn 10",
    "model.depth": "the architecture's default: wrn 28", "train.max_batches": "every batch",
    "evaluate.examples_per_class": "every test example",
    "evaluate.autoattack_per_class": "every evaluated example",
    "gate.min_average": "no threshold", "gate.max_gap": "no threshold",
    "gate.min_clean_class": "above chance, 1/classes",
    "gate.protocol.eps": "the model's training radius", "gate.protocol.min_cw_steps":
    "CW not required", "gate.protocol.min_examples_per_class": "every example of the split",
    "track.register": "register, except inside `dvc exp run`",
    "train.frl.bound_clean": "the variant's own: 0.07 with remargin, 0.1 without",
    "train.frl.bound_boundary": "the variant's own: 0.07 with remargin, 0.1 without",
    "train.frl.reference_updates": "steps as given, not scaled to the authors' updates"}


@dataclass(frozen=True)
class Knob:
    """One params leaf: ``key`` (dotted), pipeline parameter ``name``, ``kind`` and ``default``.

    ``default`` is the pipeline-side value: the plain value for typed kinds (:data:`NULL`'s
    sentinel for a null), JSON text for ``json``. ``base`` is the type of the params value
    (``kind`` except for the nullable boolean, a ``str`` parameter), ``nullable`` whether the
    sentinel decodes to None, ``description`` the text the run form shows.
    """

    key: str
    name: str
    kind: Kind
    default: Any
    base: Kind = "str"
    nullable: bool = False
    description: str = ""

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def null(self) -> Any:
        """The pipeline value meaning null (None when the knob is not nullable)."""
        return NULL[self.base] if self.nullable else None


_SCALARS: dict[Any, Kind] = {str: "str", int: "int", float: "float", bool: "bool"}


def _kind(hint: Any) -> tuple[Kind, Kind, bool]:
    """(pipeline kind, base type, nullable) of a params type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and type(None) in args:
            kind, base, nullable = _kind(inner[0])
            if base != "json" and not nullable:
                return ("str" if base == "bool" else kind), base, True
        return "json", "json", False
    if origin is tuple:
        return "json", "json", False
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return "str", "str", False
        return "json", "json", False
    if hint not in _SCALARS:
        raise TypeError(f"no pipeline-parameter kind for type {hint!r}")
    return _SCALARS[hint], _SCALARS[hint], False


def _choices(hint: Any) -> tuple[str, ...]:
    """The names a closed string set allows (``Literal["a", "b"]``, also inside Optional)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((c for c in map(_choices, typing.get_args(hint)) if c), ())
    if typing.get_origin(hint) is Literal:
        return tuple(a for a in typing.get_args(hint) if isinstance(a, str))
    return ()


def _lookup(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _split_comment(rest: str) -> str:
    """The end-of-line comment of a YAML value (``# ...`` outside quotes), or ``""``."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1:].strip()
    return ""


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>(\s.*)?)$")


def yaml_comments(text: str) -> dict[str, str]:
    """``{"train.epochs": "comment"}``: the end-of-line comment of every key in a params file.

    Why from the text: a YAML loader drops comments, and the comments in ``params.yaml`` are the
    knobs' documentation. Block mappings only (what params files use); section keys are included.
    """
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        comment = _split_comment(match["rest"] or "")
        if comment:
            out[".".join(key for _, key in stack)] = comment
    return out


def _describe(key: str, kind: Kind, base: Kind, nullable: bool, hint: Any, comment: str,
              default: Any) -> str:
    text = comment or f"params.yaml key {key}"
    choices = _choices(hint)
    if choices and not all(c in comment for c in choices):
        text += f". One of: {' | '.join(choices)}"
    if nullable:
        text += f". {json.dumps(NULL[base])} = null"
        if "null" not in comment:  # the comment, when it says what null does, is enough
            text += f" ({NULL_MEANS.get(key, 'see params.yaml')})"
        if base == "bool" and "true" not in comment:
            text += "; or true | false"
    if kind == "json":
        text += f". A JSON list, e.g. {default}"
    return text


def knobs(params: Params, comments: Mapping[str, str] | None = None) -> list[Knob]:
    """Every leaf of ``params`` as a :class:`Knob`, in params-file order, defaults from ``params``.

    ``comments`` (from :func:`yaml_comments`) describe the knobs; without them each description
    names its key.
    """
    tree = to_dict(params)
    out = []
    for key, hint in leaves(Params):
        if SEP in key:
            raise ValueError(f"params key {key!r} contains {SEP!r}; the parameter mapping needs it free")
        kind, base, nullable = _kind(hint)
        value = _lookup(tree, key)
        if kind == "json":
            default = json.dumps(value)
        elif value is None:
            default = NULL[base]
        elif base == "bool" and kind == "str":
            default = "true" if value else "false"
        else:
            default = value
        description = _describe(key, kind, base, nullable, hint, (comments or {}).get(key, ""),
                                default)
        out.append(Knob(key, key.replace(".", SEP), kind, default, base, nullable, description))
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


def _decode(knob: Knob, text: str) -> Any:
    """One substituted value back to Python; ints may arrive as ``"3.0"`` (KFP numbers are doubles),
    the null sentinel (:data:`NULL`) decodes to None."""
    key = knob.key
    if knob.nullable and knob.kind == "str" and text == NULL["str"]:
        return None
    if knob.base == "str":
        return text
    if knob.base == "bool":
        if text.strip().lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true or false, got {text!r}")
        return text.strip().lower() == "true"
    if knob.base == "json":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: {text!r} is not valid JSON/YAML: {err}") from None
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {text!r}") from None
    if knob.nullable and number == knob.null:
        return None
    if knob.base == "float":
        return number
    if not math.isfinite(number) or not number.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {text!r}")
    return int(number)


def params_from_lines(text: str) -> Params:
    """Decode :func:`knob_lines` text into validated :class:`Params`.

    Knobs absent from ``text`` keep the dataclass defaults: a component receives only the sections
    its step reads, so a change elsewhere does not invalidate its cache.
    """
    table = {k.key: k for k in knobs(Params())}
    overrides = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in table:
            raise ConfigError(f"pipeline params line {line!r}: expected KEY=VALUE with a known key")
        overrides[key] = _decode(table[key], value)
    return with_overrides(Params(), overrides)


_COUNT = re.compile(r"^\s*\d+\s*$")


def accelerator_count(value: Any, name: str = "gpus_per_node") -> int:
    """The GPU count of a run argument: a non-negative integer, written as text.

    Why text: the KFP v2 driver reads a task's accelerator limit from the bound run argument with
    ``GetStringValue()`` (kubeflow/pipelines ``backend/src/v2/driver/resolve.go``,
    ``resolvePodSpecInputRuntimeParameter``), so a number-typed parameter gives an empty limit and
    the pod gets no GPU. The pipeline parameter is therefore a string, and this is where it is
    decoded and checked: ``"2"`` -> 2; ``"-1"``, ``"1.5"``, ``"two"`` or ``""`` is an error
    naming the parameter. An ``int`` is accepted too (callers outside KFP).
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{name}: expected a non-negative integer, got {value!r}")
    if isinstance(value, str) and not _COUNT.match(value):
        raise ConfigError(f"{name}: expected a non-negative integer such as 1, got {value!r}")
    count = int(value)
    if count < 0:
        raise ConfigError(f"{name}: expected a non-negative integer, got {value!r}")
    return count
