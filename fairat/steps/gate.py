"""Gate: the fairness decision on the evaluation report, written whether it passes or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairat.config import Params, to_dict
from fairat.evidence.attestation import LOCAL_MODE, decision_statement, sign, signing_key
from fairat.artifacts import GATE_METRICS
from fairat.evidence.gate import decide_files, gate_metrics
from fairat.io import write_json_atomic


def gate_step(params: Params, report_path: str | Path, model_path: str | Path,
              out_path: str | Path) -> dict[str, Any]:
    """Fairness gate on the evaluation report of the model at ``model_path``; writes the decision.

    Fail-closed (every rule lives in :mod:`fairat.evidence.gate`). Always writes ``out_path``
    (also when blocked) and returns the decision; the caller decides whether a block is an error
    (``fairat gate --strict``).
    """
    decision = decide_files(params.gate, report_path, model_path)
    private = signing_key()
    decision["attestation"] = None if private is None else \
        sign(decision_statement(decision, to_dict(params.gate)), private)
    write_json_atomic(out_path, decision)
    write_json_atomic(Path(out_path).with_name(GATE_METRICS), gate_metrics(decision))
    verdict = "PASSED" if decision["passed"] else "BLOCKED"
    print(f"fairness gate {verdict} ({params.gate.attack}, min worst class "
          f"{100 * params.gate.min_worst_class:.1f}%)", flush=True)
    for reason in decision["reasons"]:
        print(f"  - {reason}", flush=True)
    print("decision signed with key " + decision["attestation"]["key_id"] if private else
          f"decision not signed: {LOCAL_MODE}", flush=True)
    return decision
