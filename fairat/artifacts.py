"""The artifact file names every front uses, in one table.

Why one table: the CLI's defaults, ``dvc.yaml`` and the Kubeflow runtime must agree on what each
step writes (``model.pt``, ``eval.json``, ``gate.json`` ...); a test checks ``dvc.yaml`` against
:data:`LOCAL`. Kubeflow keeps the file names inside its own artifact folders; the local layout
(CLI and DVC) puts them under the folders below.
"""

from __future__ import annotations

MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
TRAIN_JSON = "train.json"
TRAIN_CSV = "train.csv"
EVAL_JSON = "eval.json"
EVAL_SIDECAR = "eval.json.sha256"  # written by evaluate beside the report; checked by gate/register
EVAL_SUMMARY = "eval_summary.json"
EVAL_PNG = "eval_classwise.png"
MODEL_CARD = "model_card.md"
GATE_JSON = "gate.json"
REGISTERED_JSON = "registered.json"
PROVENANCE_JSON = "provenance.json"

# The local layout: `fairat ...` defaults and the paths dvc.yaml wires (relative to the repo root).
LOCAL: dict[str, str] = {
    "data": "data/prepared",
    "model": f"models/{MODEL}",
    "checkpoints": f"models/{CHECKPOINTS}",
    "metrics": f"metrics/{TRAIN_JSON}",
    "history": f"plots/{TRAIN_CSV}",
    "report": f"metrics/{EVAL_JSON}",
    "summary": f"metrics/{EVAL_SUMMARY}",
    "plot": f"plots/{EVAL_PNG}",
    "card": f"reports/{MODEL_CARD}",
    "gate": f"metrics/{GATE_JSON}",
    "registered": f"metrics/{REGISTERED_JSON}",
}
