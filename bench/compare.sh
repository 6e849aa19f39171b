#!/usr/bin/env bash
# sse-fanout against nchan and plain nginx, side by side, in one run; then
# the churn soak (sse-fanout's memory while subscribers come and go).
#
#   bash bench/compare.sh              # full run (about 25 minutes: 10 of comparison, 14 of soak)
#   bash bench/compare.sh --quick      # small run to check the set-up (about 4 minutes)
#   bash bench/compare.sh --no-churn   # the comparison only
#
# Installs nginx, nchan (libnginx-mod-nchan), HAProxy, wrk and h2load with apt-get when they
# are missing, builds the release binaries, and runs
# `target/release/sse-bench compare`, which starts every process on 127.0.0.1
# ports with configs in a temp folder, stops them afterwards, and writes its
# tables into docs/benchmarks.md; then `target/release/sse-bench churn`,
# which writes its own section there. Other arguments go to
# `sse-bench compare`.
set -euo pipefail
cd "$(dirname "$0")/.."

churn=1
out=docs/benchmarks.md
churn_args=()
compare_args=()
previous=""
for arg in "$@"; do
  case "$arg" in
    --no-churn) churn=0 ;;
    --quick) compare_args+=("$arg"); churn_args+=(--quick) ;;
    *) compare_args+=("$arg") ;;
  esac
  # Both write into the same file (`--out FILE` goes to compare as well).
  [ "$previous" = "--out" ] && out="$arg"
  previous="$arg"
done
churn_args+=(--out "$out")

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
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
target/release/sse-bench compare "${compare_args[@]}"
if [ "$churn" -eq 1 ]; then
  target/release/sse-bench churn "${churn_args[@]}"
fi
