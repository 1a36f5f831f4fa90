#!/usr/bin/env bash
# Makes sure the PostgreSQL and PgBouncer binaries that the test harness and
# the demo start are installed. As root on Debian/Ubuntu it installs the
# missing packages; otherwise it says what to install. It exits non-zero only
# when the binaries are missing and CI=true (so that CI never skips).
set -euo pipefail

have_initdb() {
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null 2>&1
}
have_pgbouncer() {
	[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1
}

if [ -n "${TENANTPG_TEST_PG_URL:-}" ] && [ -n "${TENANTPG_TEST_PGBOUNCER_ADDR:-}" ]; then
	exit 0 # servers are provided
fi
if have_initdb && have_pgbouncer; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-servers: installing postgresql and pgbouncer" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y postgresql pgbouncer
	exit 0
fi
echo "ensure-servers: PostgreSQL or PgBouncer is missing; install them (Debian: apt-get install -y postgresql pgbouncer)" >&2
case "${CI:-}" in
true | 1) exit 1 ;;
esac
exit 0
