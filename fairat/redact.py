"""Credentials out of every message fairat prints or raises: the one redaction helper.

Why: endpoints and stores are named in errors so that a failure says where it happened, but
their URLs may carry a password (``https://user:pass@minio:9000``,
``postgresql://user:pass@db/mlflow`` as MLFLOW_TRACKING_URI, a presigned
``?X-Amz-Signature=...``), and error lines end up in CI logs, pod logs and tickets. Rather than
every caller remembering to scrub, the error classes, the storage errors and the fronts' printers
pass their text through :func:`redact`, which masks:

- the password of a URL's ``user:password@`` (the user name stays: it helps), or the whole
  ``token@`` when there is no colon (then the "user" is the secret, as in ``https://TOKEN@host``);
- the value of a query parameter named like a secret (password, token, secret, signature,
  credential, key...);
- any literal value of an environment variable named like a secret (AWS_SECRET_ACCESS_KEY,
  MLFLOW_TRACKING_PASSWORD, FAIRAT_GUARD_SECRET, FAIRAT_APPROVAL_KEY...), wherever it appears.
"""

from __future__ import annotations

import os
import re

MASK = "***"
_MIN_SECRET_LEN = 6  # shorter environment values ("1", "true") would mask ordinary words
# (not "pwd": $PWD is the working folder, in every path)
_SECRET_NAME = re.compile(r"secret|passw|token|credential|private|signature|api_?key|_key$",
                          re.IGNORECASE)
# scheme://userinfo@ : userinfo stops at the first '/', whitespace or quote; greedy up to the last
# '@' before them, so an unencoded '@' inside a password is masked too
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
                       r"(?P<info>[^/\s'\"<>@]*(?:@[^/\s'\"<>@]*)*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;][\w.\-]*(?:passw|pwd|secret|token|signature|credential|sig|key)[\w.\-]*=)"
    r"[^&;#\s'\"<>]*", re.IGNORECASE)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def _secret_values() -> list[str]:
    """Values of environment variables named like secrets, longest first (a value that contains
    another is masked whole)."""
    values = {v for k, v in os.environ.items()
              if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***`` (see the module docstring for which)."""
    text = _USERINFO.sub(_mask_userinfo, str(text))
    text = _QUERY_SECRET.sub(lambda m: m["key"] + MASK, text)
    for value in _secret_values():
        text = text.replace(value, MASK)
    return text
