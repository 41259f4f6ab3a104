#!/bin/bash
# One Ray node of WeLIP's image, for Docker Compose and plain `docker run` (KubeRay writes its
# own `ray start` commands and does not use this). Installed in the image as `welip-node`.
#
#   welip-node head [ray start options...]
#       Starts the Ray head (GCS on $RAY_PORT, default 6379; dashboard and Jobs API on
#       $RAY_DASHBOARD_PORT, default 8265); then, when set, runs the ingestion job of $WELIP_INGEST_CONFIG
#       (the RAG agent's table, as `make run` does) and deploys the Serve config in
#       $WELIP_SERVE_CONFIG (a file path, as KubeRay deploys a RayService's serveConfigV2).
#   welip-node worker --address HOST:PORT [ray start options...]
#       Joins a head as a worker.
#
# The node lives as long as its Ray processes: the container stops when Ray does, so Docker's
# restart policy (or Kubernetes) replaces it. With RAY_AUTH_MODE=token every node and every
# client (serve deploy, ray job submit) needs the cluster's token in RAY_AUTH_TOKEN.
set -euo pipefail

role=${1:?usage: welip-node head|worker [ray start options...]}
shift
# Fewer processes and calls out than Ray's defaults: no usage report, no dashboard-served UI
# building at start; the dashboard and its Jobs API stay (users need them).
common=(--disable-usage-stats)

case "$role" in
  worker)
    exec ray start --block "${common[@]}" "$@"
    ;;
  head)
    dashboard_port=${RAY_DASHBOARD_PORT:-8265}
    ray start --head --block --port "${RAY_PORT:-6379}" --dashboard-port "$dashboard_port" \
      "${common[@]}" "$@" &
    ray_pid=$!
    trap 'ray stop --force >/dev/null 2>&1 || true; exit 143' TERM INT
    # The head is ready once its GCS answers.
    for _ in $(seq 1 120); do
      if ray status >/dev/null 2>&1; then break; fi
      kill -0 "$ray_pid" 2>/dev/null || { wait "$ray_pid"; exit 1; }
      sleep 1
    done
    if [ -n "${WELIP_INGEST_CONFIG:-}" ]; then
      python jobs/ingest.py --config "$WELIP_INGEST_CONFIG"
    fi
    if [ -n "${WELIP_SERVE_CONFIG:-}" ]; then
      serve deploy --address "http://127.0.0.1:$dashboard_port" "$WELIP_SERVE_CONFIG"
    fi
    wait "$ray_pid"
    ;;
  *)
    echo "welip-node: unknown role '$role' (head or worker)" >&2
    exit 2
    ;;
esac
