"""Fronts: argv in, one step call, exit code out. The `fairat` CLI (also what dvc.yaml runs); the
approve/models, storage and guard subcommands in their own modules, imported only when they run
(fronts.cli.ON_USE); `fairat pipeline` in pipelines/cli.py (an entry-point plugin)."""
