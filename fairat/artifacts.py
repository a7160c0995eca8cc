"""The artifact file names every front uses, in one table.

Why one table: the CLI's defaults, ``dvc.yaml`` and the Kubeflow runtime must agree on what each
step writes (``model.pt``, ``eval.json``, ``gate.json`` ...); a test checks ``dvc.yaml`` against
:data:`LOCAL`. Kubeflow keeps the file names inside its own artifact folders; the local layout
(CLI and DVC) puts them under the folders below.
"""

from __future__ import annotations

# The prefix of every MLflow tag this project sets (runs and model versions): a name on the
# outputs, like the file names, so tracking and the evidence rules share it without importing
# each other.
TAG = "fairat."

MODEL = "model.pt"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
TRAIN_JSON = "train.json"
TRAIN_CSV = "train.csv"
EVAL_JSON = "eval.json"
EVAL_SUMMARY = "eval_summary.json"
EVAL_PNG = "eval_classwise.png"
CLASSWISE_CSV = "eval_classwise.csv"  # beside the chart: per class x attack, for dvc plots
TRAIN_METRICS = "train_metrics.json"  # beside train.json: its numbers only, the DVC metric
EVAL_MD = "eval_report.md"  # the class-wise report in Markdown (evaluate)
MODEL_CARD = "model_card.md"  # written by register, after the gate
GATE_JSON = "gate.json"
GATE_METRICS = "gate_metrics.json"  # beside gate.json: passed and the judged numbers only
REGISTERED_JSON = "registered.json"
COMPARISON_JSON = "comparison.json"  # the lift over the baseline trained beside the model (compare)
COMPARISON_PNG = "comparison_classwise.png"  # the model's and the baseline's classes, gate line

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
    "markdown": f"reports/{EVAL_MD}",
    "card": f"reports/{MODEL_CARD}",
    "gate": f"metrics/{GATE_JSON}",
    "registered": f"metrics/{REGISTERED_JSON}",
    "comparison": f"metrics/{COMPARISON_JSON}",
    "chart": f"plots/{COMPARISON_PNG}",
}

# The PGD-AT baseline the local run trains beside the model (same data, seed, budget): its own
# files, so neither run overwrites the other; keys are the `fairat train/evaluate` flags.
BASELINE: dict[str, str] = {
    "model": f"models/baseline/{MODEL}",
    "checkpoints": f"models/baseline/{CHECKPOINTS}",
    "metrics": f"metrics/baseline/{TRAIN_JSON}",
    "history": f"plots/baseline/{TRAIN_CSV}",
    "report": f"metrics/baseline/{EVAL_JSON}",
    "summary": f"metrics/baseline/{EVAL_SUMMARY}",
    "plot": f"plots/baseline/{EVAL_PNG}",
    "markdown": f"reports/baseline/{EVAL_MD}",
}
