"""Pipeline steps, files in and files out: the one implementation behind the CLI, DVC and Kubeflow.

One module per step (prepare, train, evaluate, gate, register), so each DVC stage depends on
exactly the code its step imports. Each step reads only its inputs and writes only its outputs
(atomically), so an orchestrator can cache, retry or resume it. Paths are arguments, never
hard-coded. This package's ``__init__`` imports nothing, on purpose.
"""
