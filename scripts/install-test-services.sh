#!/usr/bin/env bash
# Installs the services the test suite starts on loopback and that pip cannot provide:
# Debian's PostgreSQL server (team-mode test: `mlflow server` with a PostgreSQL backend store).
# The S3 endpoint (moto's server) comes from the Python test extras, `pip install -e ".[dev]"`.
#
# Idempotent and noninteractive: does nothing when the server binaries are already there
# (/usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres}). Works as root, or through sudo.
# The tests start their own throw-away cluster; the packaged default cluster is not needed, so
# it is neither created nor started here.
set -euo pipefail

have_postgres() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [[ -x "$bin/initdb" && -x "$bin/pg_ctl" && -x "$bin/postgres" ]] && return 0
    done
    return 1
}

if have_postgres; then
    echo "install-test-services: PostgreSQL server binaries present ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    echo "install-test-services: PostgreSQL is missing and this user can neither apt-get nor sudo;" >&2
    echo "  install Debian's 'postgresql' package (apt-get install postgresql) and re-run" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-services: no apt-get here; install PostgreSQL (server binaries in" >&2
    echo "  /usr/lib/postgresql/<version>/bin) with this system's package manager" >&2
    exit 1
fi

echo "install-test-services: installing Debian's postgresql with apt-get"
export DEBIAN_FRONTEND=noninteractive
# no default cluster: the tests create and remove their own
"${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/fairat-no-main.conf >/dev/null
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql

have_postgres || { echo "install-test-services: postgresql installed but no server binaries found" >&2; exit 1; }
echo "install-test-services: PostgreSQL ready"
