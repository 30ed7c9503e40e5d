#!/bin/sh
# Installs what strait-bench's baselines need on a Debian runner (root): rsync, netcat-openbsd,
# zstd, curl, python3 (the HTTP origin), iproute2 (ip, ss). Only installs what is missing.
# Without root it lists what is missing and exits 0; strait-bench then refuses with the tool's name.
set -eu
missing=""
for pair in rsync:rsync nc:netcat-openbsd zstd:zstd curl:curl python3:python3 ip:iproute2 ss:iproute2 tar:tar; do
    tool=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$tool" >/dev/null 2>&1; then
        case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-deps.sh: missing:$missing (not root; not installing)" >&2
    exit 0
fi
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
