"""What a promotion rests on: the fairness gate's rules and the report an approver reads.
Pure functions over files and dicts; no torch, no MLflow."""
