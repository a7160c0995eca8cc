"""The MLOps edge: the outside services the pipeline talks to (MLflow tracking and registry, S3).
Only this layer imports mlflow and boto3."""
