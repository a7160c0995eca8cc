"""The engine: everything that thinks. Data, models, attacks, the training loop and its methods,
hard examples, class-wise evaluation. Needs torch; never imports MLflow, S3 or Kubernetes code."""
