"""Kubernetes settings of the GPU training pods, in the spellings operators type: tolerations
(``KEY[=VALUE][:EFFECT]``, as ``kubectl taint`` writes taints), node labels (``KEY=VALUE``),
quantities (``8``, ``500m``, ``32Gi``) and object names.

Why a module of its own: the Kubeflow pipeline (compile time, train pods of its own) and the
TrainJob launcher (run time, inside the image, without kfp) apply the same settings, and both
must refuse a malformed one with a message naming it before a pod that never schedules.
"""

from __future__ import annotations

import re

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
MEMORY = re.compile(r"^\d+(\.\d+)?(E|P|T|G|M|K|Ei|Pi|Ti|Gi|Mi|Ki)?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE][:EFFECT]`` as a Kubernetes toleration (the keys ``add_toleration`` takes):
    with a value the operator is Equal, without one Exists; no effect tolerates every effect.
    ``nvidia.com/gpu:NoSchedule`` tolerates the taint GPU node pools usually carry."""
    rest, _, effect = text.rpartition(":") if ":" in text else (text, "", "")
    key, eq, value = rest.partition("=")
    if not _LABEL_KEY.match(key) or (eq and not _LABEL_VALUE.match(value)) \
            or (effect and effect not in EFFECTS):
        raise ValueError(f"toleration {text!r}: expected KEY[=VALUE][:EFFECT], e.g. "
                         f"nvidia.com/gpu:NoSchedule (effects: {', '.join(EFFECTS)})")
    out = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        out["value"] = value
    if effect:
        out["effect"] = effect
    return out


def node_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a node selector (e.g. ``nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3``)."""
    key, eq, value = text.partition("=")
    if not eq or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
        raise ValueError(f"node selector {text!r}: expected KEY=VALUE, e.g. "
                         "cloud.google.com/gke-accelerator=nvidia-h100-80gb")
    return key, value


def check_quantity(name: str, value: str | None, memory: bool) -> None:
    """Refuse ``value`` unless it is a CPU (``8``, ``500m``) or memory (``32Gi``) quantity."""
    if value is not None and not (MEMORY if memory else CPU).match(value):
        raise ValueError(f"{name}: {value!r} is not a Kubernetes quantity like "
                         f"{'32Gi' if memory else '8 or 500m'}")


def check_secret_name(name: str) -> None:
    if not _DNS_NAME.match(name):
        raise ValueError(f"image pull secret {name!r} is not a Kubernetes Secret name")
