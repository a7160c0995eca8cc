"""Everything Kubeflow that runs inside the project image: the component runtime (artifact folders
to step calls), the params <-> pipeline-parameter codec, and Kubeflow Trainer TrainJobs. The
component and pipeline definitions themselves live in the top-level components/ and pipelines/."""
