#!/usr/bin/env bash
# The stack on a kind cluster: build and load the images, install Istio with the Gateway API
# Inference Extension, apply overlays/kind/inference-scheduling (= overlays/cpu/inference-scheduling
# with the sim-engines component), wait for it, and port-forward the Istio gateway.
#
#   tests/e2e/kind/run.sh up        create the cluster and deploy (idempotent)
#   tests/e2e/kind/run.sh forward   port-forward the gateway to 127.0.0.1:$LLMD_KIND_PORT (8080)
#   tests/e2e/kind/run.sh down      delete the cluster
#
# Needs docker, kind, kubectl and istioctl on PATH, and network access for the Gateway API and
# Inference Extension CRDs (override their URLs with GATEWAY_API_CRDS / GIE_CRDS).
set -euo pipefail
cd "$(dirname "$0")/../../.."

CLUSTER=${LLMD_KIND_CLUSTER:-llmd-e2e}
NAMESPACE=llm-d
OVERLAY=deploy/kustomize/overlays/kind/inference-scheduling
PORT=${LLMD_KIND_PORT:-8080}
GATEWAY_API_CRDS=${GATEWAY_API_CRDS:-https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/standard-install.yaml}
GIE_CRDS=${GIE_CRDS:-https://github.com/kubernetes-sigs/gateway-api-inference-extension/releases/download/v1.0.0/manifests.yaml}

need() { command -v "$1" >/dev/null 2>&1 || { echo "missing: $1 ($2)" >&2; exit 3; }; }

up() {
  need docker "https://docs.docker.com/engine/install/"
  need kind "go install sigs.k8s.io/kind@latest"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  need istioctl "https://istio.io/latest/docs/setup/getting-started/#download"
  docker info >/dev/null 2>&1 || { echo "docker: no engine answers" >&2; exit 3; }
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  kubectl config use-context "kind-$CLUSTER" >/dev/null

  python3 deploy/images.py build
  for image in $(python3 deploy/images.py list | awk '{print $NF}'); do
    kind load docker-image --name "$CLUSTER" "$image"
  done

  kubectl apply -f "$GATEWAY_API_CRDS"
  kubectl apply -f "$GIE_CRDS"
  istioctl install -y --set profile=minimal \
    --set values.pilot.env.ENABLE_GATEWAY_API_INFERENCE_EXTENSION=true

  kubectl apply -k "$OVERLAY"
  kubectl -n "$NAMESPACE" wait --for=condition=Available deployment --all --timeout=300s
  kubectl -n "$NAMESPACE" wait --for=condition=Programmed gateway/llmd-gateway --timeout=300s
}

forward() {
  exec kubectl -n "$NAMESPACE" port-forward service/llmd-gateway-istio "$PORT:80"
}

down() {
  kind delete cluster --name "$CLUSTER"
}

case "${1:-up}" in
  up) up ;;
  forward) forward ;;
  down) down ;;
  *) echo "usage: $0 up|forward|down" >&2; exit 2 ;;
esac
