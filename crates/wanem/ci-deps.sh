#!/bin/sh
# Installs what the strait-wanem tests need on a Debian CI runner (root): only iproute2 (`ip`).
# The accuracy tests measure with their own Rust UDP/TCP code, so no iperf3/ping is needed.
# Without root the tests print `skipped: <reason>` and pass.
set -eu
if command -v ip >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ci-deps.sh: iproute2 missing and not root; wanem tests will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2
