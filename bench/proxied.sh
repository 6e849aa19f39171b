#!/usr/bin/env bash
# Ordinary proxied requests, side by side: sse-fanout and nginx in front of
# the same app (`sse-bench app`, GET /hello: 6 bytes), on 127.0.0.1.
#
#   bash bench/proxied.sh [ROUNDS] [SSE_FANOUT_BINARY...]
#
# Each round runs, for nginx and each sse-fanout binary given (default:
# target/release/sse-fanout), 10 s of
#   - HTTP/1.1 keep-alive: wrk -t1 -c32 --latency on the plaintext listener;
#   - HTTP/2 + TLS:        h2load -c20 -m10 on the TLS listener;
# after a 3 s warm-up, and prints requests/s, latency and the proxy's CPU
# (user + system, all its processes) per second and per request. Rounds
# interleave the contenders so that a noisy neighbour hits them alike.
# A last pass holds half of nginx's median peak (h2load --rps, 10 s of each
# protocol) and prints p50/p99/max from h2load's per-request log.
# Needs wrk, h2load (nghttp2-client) and nginx; builds nothing: run
# `cargo build --release -p sse-fanout -p sse-bench` first.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/sse-fanout)
for tool in wrk h2load nginx; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench/proxied.sh needs $tool" >&2; exit 1; }
done
repo=$(pwd)
work=$(mktemp -d)
trap 'pkill -f "nginx -c $work" 2>/dev/null || true; rm -rf "$work"' EXIT
# Below Linux's ephemeral range (32768-60999), so that no outgoing
# connection of the proxies (to the app) can hold one of them.
app_port=23099 tls_port=23443 plain_port=23080
target/release/sse-bench app --listen 127.0.0.1:$app_port >"$work/app.log" 2>&1 &
app=$!
trap 'kill $app 2>/dev/null; pkill -f "nginx -c $work" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$app_port/hello" && break
  sleep 0.1
done
if ! kill -0 $app 2>/dev/null; then
  echo "the app could not start (is port $app_port taken?): $(cat "$work/app.log")" >&2
  exit 1
fi

cat >"$work/sse-fanout.toml" <<EOF
[server]
threads = 2
pid_file = "$work/sse-fanout.pid"
upgrade_sock = "$work/upgrade.sock"
[[listen]]
addr = "127.0.0.1:$tls_port"
tls = { cert = "$repo/certs/dev/localhost.pem", key = "$repo/certs/dev/localhost-key.pem" }
[[listen]]
addr = "127.0.0.1:$plain_port"
[app]
upstream = "127.0.0.1:$app_port"
EOF
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
daemon on;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx/tmp; proxy_temp_path $work/nginx/tmp; fastcgi_temp_path $work/nginx/tmp;
    uwsgi_temp_path $work/nginx/tmp; scgi_temp_path $work/nginx/tmp;
    upstream app { server 127.0.0.1:$app_port; keepalive 64; }
    server {
        listen 127.0.0.1:$tls_port ssl http2;
        listen 127.0.0.1:$plain_port;
        http2_max_concurrent_streams 128;
        ssl_certificate $repo/certs/dev/localhost.pem;
        ssl_certificate_key $repo/certs/dev/localhost-key.pem;
        location = /hello { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF

# CPU ticks (user + system) of the processes whose ids are given.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
hz=$(getconf CLK_TCK)

wait_up() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$plain_port/hello" && return 0
    sleep 0.1
  done
  echo "nothing answers on $plain_port" >&2; return 1
}

# measure NAME PIDS...: both loads against what listens now.
measure() {
  local name=$1; shift
  wrk -t1 -c32 -d3s "http://127.0.0.1:$plain_port/hello" >/dev/null
  local t0 t1 out rate
  t0=$(ticks "$@")
  out=$(wrk -t1 -c32 -d10s --latency "http://127.0.0.1:$plain_port/hello")
  t1=$(ticks "$@")
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  printf '%-28s h1  %9.0f req/s  p50 %8s  p99 %8s  CPU %4d %%  %5.1f us/request\n' "$name" "$rate" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    $(( (t1 - t0) * 100 / hz / 10 )) "$(awk -v t=$((t1 - t0)) -v hz="$hz" -v r="$rate" 'BEGIN {print t / hz / 10 / r * 1e6}')"
  h2load -c20 -m10 -D 3 "https://127.0.0.1:$tls_port/hello" >/dev/null 2>&1
  t0=$(ticks "$@")
  out=$(h2load -c20 -m10 -D 10 "https://127.0.0.1:$tls_port/hello" 2>&1)
  t1=$(ticks "$@")
  rate=$(awk '/finished in/ {print $4}' <<<"$out")
  printf '%-28s h2  %9.0f req/s  mean %7s  max %9s  CPU %4d %%  %5.1f us/request\n' "$name" "$rate" \
    "$(awk '/^time for request/ {print $6}' <<<"$out")" "$(awk '/^time for request/ {print $5}' <<<"$out")" \
    $(( (t1 - t0) * 100 / hz / 10 )) "$(awk -v t=$((t1 - t0)) -v hz="$hz" -v r="$rate" 'BEGIN {print t / hz / 10 / r * 1e6}')"
}

# fixed NAME PIDS...: latency at a fixed rate (half of nginx's median peak,
# $h1_rate and $h2_rate requests/s), from h2load's per-request log.
fixed() {
  local name=$1; shift
  local log=$work/requests.log t0 t1
  for load in h1 h2; do
    if [ $load = h1 ]; then
      args=(--h1 -c32 --rps $((h1_rate / 32)) "http://127.0.0.1:$plain_port/hello")
    else
      args=(-c20 -m10 --rps $((h2_rate / 20)) "https://127.0.0.1:$tls_port/hello")
    fi
    h2load -D 3 "${args[@]}" >/dev/null 2>&1
    rm -f "$log"
    t0=$(ticks "$@")
    h2load -D 10 --log-file="$log" "${args[@]}" >/dev/null 2>&1
    t1=$(ticks "$@")
    # Third column: microseconds from request to the end of its response.
    sort -n -k3 "$log" | awk -v name="$name" -v load=$load -v cpu=$(( (t1 - t0) * 100 / hz / 10 )) \
      '{ l[NR] = $3; if ($2 != 200) bad++ }
       END { printf "%-28s %s at a fixed %7d req/s  p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  CPU %4d %%  non-200: %d\n",
             name, load, NR / 10, l[int(NR * 0.5)] / 1000, l[int(NR * 0.99)] / 1000, l[NR] / 1000, cpu, bad }'
  done
}

# start BINARY: sse-fanout from BINARY, its pid in $proxy.
start() {
  RUST_LOG=warn "$1" -c "$work/sse-fanout.toml" >"$work/sse-fanout.log" 2>&1 &
  proxy=$!
  wait_up
}

start_nginx() {
  nginx -c "$work/nginx.conf" -p "$work/nginx" 2>/dev/null
  wait_up
}

stop_nginx() {
  nginx -c "$work/nginx.conf" -p "$work/nginx" -s stop 2>/dev/null
  for _ in $(seq 50); do pgrep -f "nginx: master" >/dev/null || break; sleep 0.1; done
}

# contenders FN: runs `FN NAME PIDS...` with each sse-fanout binary, then
# with nginx, each started for it and stopped after.
contenders() {
  local fn=$1 binary
  for binary in "${binaries[@]}"; do
    start "$binary"
    "$fn" "sse-fanout ($binary)" $proxy
    kill $proxy; wait $proxy 2>/dev/null || true
  done
  start_nginx
  "$fn" nginx $(pgrep -f "nginx: worker" | tr '\n' ' ')
  stop_nginx
}

nginx_h1=() nginx_h2=()
for round in $(seq "$rounds"); do
  echo "# round $round"
  out=$(contenders measure)
  echo "$out"
  nginx_h1+=("$(awk '$1 == "nginx" && $2 == "h1" {print $3}' <<<"$out")")
  nginx_h2+=("$(awk '$1 == "nginx" && $2 == "h2" {print $3}' <<<"$out")")
done

# Latency at half of nginx's peak (its median over the rounds).
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print int(v[int((NR + 1) / 2)]) }'; }
h1_rate=$(( $(median "${nginx_h1[@]}") / 2 ))
h2_rate=$(( $(median "${nginx_h2[@]}") / 2 ))
echo "# at half of nginx's median peak: $h1_rate req/s (h1), $h2_rate req/s (h2)"
contenders fixed
