"""The Kubeflow pipeline definition (`fairat_pipeline.py`) and its committed compiled YAML."""
