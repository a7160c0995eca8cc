"""`fairat guard serve|register`: the alias guard beside `mlflow server` (a thin front on guard).

Hook into the main parser with ``guard_cli.add_parser(sub)`` and dispatch ``args.command ==
"guard"`` to ``guard_cli.run(args)`` (returns the exit code). Secrets come from the environment
only (see docs/guard.md); none is taken on the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import os
import sys

from fairat.redact import redact

SECRET_ENV = "FAIRAT_GUARD_SECRET"
APPROVAL_KEY_ENV = "FAIRAT_APPROVAL_KEY"  # the same name as fairat.evidence.gate's
ENV_HELP = (f"Environment: {SECRET_ENV} (required) is the webhook HMAC secret shared with MLflow; "
            f"{APPROVAL_KEY_ENV} (optional) is the approval key of `fairat approve`: when set, "
            "`champion` needs an approval signed with it; FAIRAT_VERIFY_KEY or "
            "FAIRAT_VERIFY_KEY_FILE (optional) is the Ed25519 public key: when set, a version's "
            "verdict is its signed gate decision checked against its logged files (without it, "
            "local mode guards against accidents, not adversaries); MLFLOW_TRACKING_URI is the "
            "`mlflow server` URL (http or https). See docs/guard.md.")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("guard",
                       help="revert hand-set candidate/champion aliases that skip the gate",
                       description="A webhook receiver run beside `mlflow server`: when an alias "
                                   "`candidate` or `champion` is set on a version the rules do "
                                   "not allow, it deletes the alias, puts `champion` back on the "
                                   "most recently approved allowed version, and tags the version "
                                   "fairat.guard_reverted. " + ENV_HELP)
    actions = p.add_subparsers(dest="guard_action", required=True, metavar="ACTION")
    serve = actions.add_parser("serve", help="run the receiver (POST /webhook, GET /healthz)",
                               description="Receive MLflow's model_version_alias.created "
                                           "webhooks and enforce the alias rules. " + ENV_HELP)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8765,
                       help="port to listen on (default: %(default)s)")
    serve.add_argument("--model", dest="models", action="append", default=[], metavar="NAME",
                       help="guard only this registered model (repeatable; default: all models)")
    serve.add_argument("--max-age", type=float, default=900.0, metavar="SECONDS",
                       help="refuse deliveries whose signed timestamp is older than this; "
                            "MLflow's retries keep the first timestamp (default: %(default)s)")
    serve.add_argument("--reconcile-every", type=float, default=60.0, metavar="SECONDS",
                       help="re-check every alias of the guarded models this often (also at "
                            "start): catches what webhooks miss, e.g. a deleted champion or an "
                            "alias set while the guard was down; 0 = at start only "
                            "(default: %(default)s)")
    register = actions.add_parser("register", help="create or update the MLflow webhook",
                                  description="Create (or update, by name) the webhook for event "
                                              "model_version_alias.created on the `mlflow server` "
                                              "at MLFLOW_TRACKING_URI, signed with "
                                              f"{SECRET_ENV}. " + ENV_HELP)
    register.add_argument("--url", required=True,
                          help="where MLflow posts, e.g. http://127.0.0.1:8765/webhook")
    register.add_argument("--name", default="fairat-guard",
                          help="webhook name (default: %(default)s)")
    return p


def _fail(action: str, message: str) -> int:
    print(f"fairat guard {action}: error: {redact(message)}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    action = args.guard_action
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        return _fail(action, f"{SECRET_ENV} is not set: export the webhook secret (the same for "
                             "`serve` and `register`)")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri.startswith(("http://", "https://")):
        return _fail(action, "MLFLOW_TRACKING_URI must be the `mlflow server` URL (http or "
                             f"https); it is {uri or 'unset'!r}")
    from fairat.edge import guard
    from fairat.errors import RegistryError

    try:
        if action == "register":
            done = guard.register_webhook(args.url, secret, args.name)
            print(f"webhook {done['name']!r} {done['action']} ({done['webhook_id']}): "
                  f"{guard.EVENT} -> {redact(done['url'])}; MLflow picks it up within its webhook cache "
                  "TTL (MLFLOW_WEBHOOK_CACHE_TTL, 60 s by default)")
            return 0
        key = os.environ.get(APPROVAL_KEY_ENV, "") or None
        if args.max_age <= 0:
            return _fail(action, "--max-age must be positive")
        from fairat.evidence.attestation import LOCAL_MODE, SigningKeyError, key_id, verify_key

        try:
            public = verify_key()
        except SigningKeyError as err:
            return _fail(action, str(err))
        rules = guard.Guard(approval_key=key, models=args.models, verify_key=public)
        if args.reconcile_every < 0:
            return _fail(action, "--reconcile-every must be 0 or positive")
        server = guard.GuardServer(rules, secret, args.host, args.port, args.max_age,
                                   reconcile_every_s=args.reconcile_every)
    except RegistryError as err:
        return _fail(action, str(err))
    except OSError as err:  # port in use, bad address
        return _fail(action, f"cannot listen on {args.host}:{args.port}: {err}")
    signing = f"must be signed with {APPROVAL_KEY_ENV}" if key else \
        f"need no signature ({APPROVAL_KEY_ENV} unset)"
    mode = (f"attested mode: versions verified with key {key_id(public)}" if public is not None
            else LOCAL_MODE)
    print(f"fairat guard: listening on {server.url} for {redact(uri)}; models: "
          f"{', '.join(args.models) or 'all'}; champion approvals {signing}; {mode}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
