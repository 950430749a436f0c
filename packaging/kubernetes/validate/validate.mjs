// Validate the Prometheus Operator resources of rendered manifests (YAML on stdin) against the
// schemas of @kubernetes-models/prometheus-operator; exit 1 naming each invalid resource.
import fs from "node:fs";
import yaml from "js-yaml";
import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { ServiceMonitor, PrometheusRule };
const docs = yaml.loadAll(fs.readFileSync(0, "utf8")).filter(Boolean);
let failed = 0;
let checked = 0;
for (const doc of docs) {
  const Model = doc.apiVersion === "monitoring.coreos.com/v1" && models[doc.kind];
  if (!Model) continue;
  try {
    new Model(doc).validate();
    checked++;
    console.log(`valid: ${doc.kind}/${doc.metadata.name}`);
  } catch (e) {
    failed++;
    console.error(`invalid: ${doc.kind}/${doc.metadata && doc.metadata.name}: ${e.message}`);
  }
}
if (checked + failed === 0) {
  console.error("no Prometheus Operator resource found");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
