#!/usr/bin/env bash
# sse-fanout against nchan and plain nginx, side by side, in one run.
#
#   bash bench/compare.sh            # full run (about 10 minutes)
#   bash bench/compare.sh --quick    # small run to check the set-up (about 2 minutes)
#
# Installs nginx, nchan (libnginx-mod-nchan) and wrk with apt-get when they
# are missing, builds the release binaries, and runs
# `target/release/sse-bench compare`, which starts every process on 127.0.0.1
# ports with configs in a temp folder, stops them afterwards, and writes its
# tables into docs/benchmarks.md. Extra arguments go to `sse-bench compare`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if [ ${#missing[@]} -gt 0 ]; then
  echo "compare: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo build --release --workspace --bins
# Load generators and nginx hold many sockets: raise the soft limit as far as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/sse-bench compare "$@"
