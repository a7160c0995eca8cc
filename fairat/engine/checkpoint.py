"""Checkpoint and model files: state dicts and plain config only, loaded with ``weights_only=True``.

Why: a pickled model object would execute code on load and break on any refactor; a state dict plus
the plain config that rebuilds the architecture is safe to load from an untrusted source and stable.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fairat.config import ModelConfig, from_dict, to_dict
from fairat.io import save_torch_atomic
from fairat.engine.models import ModelSpec, PixelSpaceModel, build_model

MODEL_FORMAT = "fairat-model-v1"
IGNORED_ON_RESUME = {"progress", "device", "amp"}


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Atomically write ``obj`` (tensors, dicts, lists, numbers, strings only)."""
    save_torch_atomic(obj, path)


def load_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """Load a checkpoint safely; a missing or corrupt file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises retrying with weights_only=False: the wrong advice for a file
        # that may be hostile. Say what the file holds and stop.
        found = re.search(r"GLOBAL (\S+)", str(err))
        hint = (f"it references {found.group(1)}" if found
                else "it holds objects other than tensors and plain data")
        raise ValueError(f"cannot load checkpoint {path}: refused, not a plain-data fairat checkpoint "
                         f"({hint}); fairat never unpickles arbitrary objects. Re-create it "
                         "with `fairat train`.") from None
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err


def data_fingerprint(data: Any) -> str:
    """sha256 of what training reads of the prepared data (the train and validation splits:
    images, labels, class names), recorded in every checkpoint so ``--resume`` refuses to go on
    with another split. Test data is left out: training never reads it."""
    digest = hashlib.sha256()
    for name in ("train", "val"):
        split = getattr(data, name)
        digest.update(f"{name}:{list(split.class_names)}:{tuple(split.images.shape)}\n".encode())
        digest.update(split.images.contiguous().numpy())  # the buffer itself: no copy
        digest.update(split.labels.to(torch.int64).contiguous().numpy())
    return digest.hexdigest()


def model_file_payload(state_dict: dict[str, torch.Tensor], model_cfg: ModelConfig, spec: ModelSpec,
                       class_names: tuple[str, ...], epoch: int,
                       config: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to rebuild and identify a trained model, as plain data."""
    return {"format": MODEL_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "model": to_dict(model_cfg), "spec": {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in asdict(spec).items()},
            "class_names": list(class_names), "epoch": epoch, "config": config}


def load_model(path: str | Path, device: torch.device) -> tuple[PixelSpaceModel, dict[str, Any]]:
    """Rebuild the model saved by training; returns (model in eval mode, metadata)."""
    payload = load_checkpoint(path, torch.device("cpu"))
    if payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a fairat model file (format {payload.get('format')!r})")
    spec_raw = payload["spec"]
    spec = ModelSpec(spec_raw["in_channels"], spec_raw["num_classes"], spec_raw["image_size"],
                     tuple(spec_raw["mean"]), tuple(spec_raw["std"]))
    model_cfg = from_dict(ModelConfig, payload["model"], prefix="model.")
    model = build_model(model_cfg.name, spec, model_cfg.width, model_cfg.depth)
    model.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two run configs (run-neutral keys ignored)."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key not in IGNORED_ON_RESUME:
                    walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            diffs.append(prefix.rstrip("."))

    walk(saved, current, "")
    return diffs
