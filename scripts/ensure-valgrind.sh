#!/usr/bin/env bash
# Makes sure valgrind is installed: section 7 of make bench-report counts
# instructions with its cachegrind tool. As root on Debian/Ubuntu it installs
# the package; otherwise it says what to install and fails.
set -euo pipefail

if command -v valgrind >/dev/null 2>&1; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "ensure-valgrind: installing valgrind" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y valgrind
	exit 0
fi
echo "ensure-valgrind: valgrind is missing; install it (Debian: apt-get install -y valgrind)" >&2
exit 1
