"""`fairat storage push|pull`: copy a folder to or from an S3 prefix (a thin front on storage).

Hook into the main parser with ``storage_cli.add_parser(sub)`` and dispatch ``args.command ==
"storage"`` to ``storage_cli.run(args)`` (returns the exit code). The endpoint and credentials come
from the environment (see docs/storage.md); nothing about them is taken on the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("storage", help="push or pull a folder to or from S3",
                       description="Copy a folder to or from an S3 prefix. Endpoint from "
                                   "FAIRAT_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL), credentials "
                                   "from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.")
    actions = p.add_subparsers(dest="storage_action", required=True, metavar="ACTION")
    push = actions.add_parser("push", help="upload LOCAL_DIR to s3://bucket/prefix "
                                           "(creates the bucket if missing)")
    push.add_argument("local_dir", type=Path, metavar="LOCAL_DIR")
    push.add_argument("url", metavar="S3_URL")
    pull = actions.add_parser("pull", help="download s3://bucket/prefix into LOCAL_DIR, "
                                           "each file atomically")
    pull.add_argument("url", metavar="S3_URL")
    pull.add_argument("local_dir", type=Path, metavar="LOCAL_DIR")
    remote = actions.add_parser("dvc-remote", help="make S3_URL this DVC repo's default remote "
                                                   "(endpoint into .dvc/config.local)")
    remote.add_argument("url", metavar="S3_URL")
    remote.add_argument("--name", default="storage", help="remote name (default: %(default)s)")
    remote.add_argument("--repo", default=Path("."), type=Path,
                        help="DVC repository root (default: current folder)")
    return p


def run(args: argparse.Namespace) -> int:
    from fairat.edge import storage
    from fairat.redact import redact

    try:
        if args.storage_action == "push":
            done = storage.push(args.local_dir, args.url)
            print(f"pushed {len(done)} files to {redact(args.url)}")
        elif args.storage_action == "pull":
            done = storage.pull(args.url, args.local_dir)
            print(f"pulled {len(done)} files into {args.local_dir}")
        else:
            storage.configure_dvc_remote(args.repo, args.url, args.name)
            print(f"DVC remote {args.name!r} -> {redact(args.url)} (endpoint in "
                  ".dvc/config.local)")
    except storage.StorageError as exc:
        print(f"fairat storage {args.storage_action}: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0
