"""Fronts: argv in, one step call, exit code out. The `fairat` CLI (also what dvc.yaml runs) and its
storage subcommand. `fairat pipeline` lives in pipelines/cli.py (see fronts.cli.plugin_commands)."""
