#!/usr/bin/env bash
# Render both overlays with `kubectl kustomize` and validate them: the Kubernetes kinds against
# the Kubernetes 1.30 schemas, strictly (kubernetes-validate, PyPI, in
# target/kubernetes-validate), the Prometheus Operator kinds against the schemas of
# @kubernetes-models/prometheus-operator (npm, pinned in validate/package-lock.json); and prove
# the second check is not vacuous on a deliberately broken copy. tests/kubernetes.rs checks what
# the rendered manifests say (the exporter's flags and config, probes, the dashboards).
set -euo pipefail
cd "$(dirname "$0")/../.."
kv=target/kubernetes-validate/bin/kubernetes-validate
test -x "$kv" || { echo "missing $kv (see .ci/run)" >&2; exit 1; }
mkdir -p target/k8s
(cd packaging/kubernetes/validate && npm ci --no-audit --no-fund --loglevel=error)
# kubernetes-validate: strict, and only the two Prometheus Operator kinds may lack a schema.
kube_validate() {
  local report rc=0
  report=$("$kv" --strict --quiet -k 1.30.0 "$1" 2>&1) || rc=$?
  report=$(grep -v "Couldn't find schema for kind \(PrometheusRule\|ServiceMonitor\) " <<<"$report" || true)
  [ "$rc" = 0 ] && [ -z "$report" ] || { printf '%s\n' "$report" >&2; return 1; }
}
for overlay in standalone sidecar; do
  out=target/k8s/$overlay.yaml
  kubectl kustomize "packaging/kubernetes/overlays/$overlay" >"$out"
  kube_validate "$out" || { echo "$overlay: invalid Kubernetes objects" >&2; exit 1; }
  (cd packaging/kubernetes/validate && node validate.mjs) <"$out"
  echo "$overlay: $(grep -c '^kind:' "$out") resources valid"
done
# Neither check is vacuous: a misspelt Deployment field and a mistyped ServiceMonitor field fail.
sed 's/^  replicas: /  replicaz: /' target/k8s/standalone.yaml >target/k8s/broken-deployment.yaml
if kube_validate target/k8s/broken-deployment.yaml 2>/dev/null; then
  echo "a broken Deployment passed kubernetes-validate" >&2
  exit 1
fi
if sed 's/^  - interval: 30s/  - interval: [30s]/' target/k8s/standalone.yaml \
  | (cd packaging/kubernetes/validate && node validate.mjs) >/dev/null 2>&1; then
  echo "a broken ServiceMonitor passed the validation" >&2
  exit 1
fi
echo "kubernetes manifests: OK"
