// Labels (or unlabels) this node through the Kubernetes API with the pod's service account, so that the
// RuntimeClasses' nodeSelector only schedules onto nodes where Cocoon is installed. Only when running in a
// cluster: NODE_NAME set (downward API) and a service account mounted.
import { readFileSync, existsSync } from "node:fs";
import { request } from "node:https";

export const NODE_LABEL = "cocoon.io/runtime";
const SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface ClusterAccess {
  apiHost: string;
  apiPort: string;
  token: string;
  ca: string;
  nodeName: string;
}

/** The in-cluster credentials, or undefined when not running as a pod with a service account. */
export function inClusterAccess(env: NodeJS.ProcessEnv = process.env, saDir = SA_DIR): ClusterAccess | undefined {
  const nodeName = env["NODE_NAME"];
  const apiHost = env["KUBERNETES_SERVICE_HOST"];
  if (!nodeName || !apiHost || !existsSync(`${saDir}/token`)) return undefined;
  return {
    apiHost,
    apiPort: env["KUBERNETES_SERVICE_PORT"] ?? "443",
    token: readFileSync(`${saDir}/token`, "utf8").trim(),
    ca: readFileSync(`${saDir}/ca.crt`, "utf8"),
    nodeName,
  };
}

/** Sets the label to "true" (add) or removes it (a JSON merge patch with null). */
export function setNodeLabel(access: ClusterAccess, add: boolean, timeoutMs = 15_000): Promise<void> {
  const body = JSON.stringify({ metadata: { labels: { [NODE_LABEL]: add ? "true" : null } } });
  const host = access.apiHost.includes(":") ? `[${access.apiHost}]` : access.apiHost;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: access.apiHost,
        port: access.apiPort,
        method: "PATCH",
        path: `/api/v1/nodes/${encodeURIComponent(access.nodeName)}`,
        ca: access.ca,
        timeout: timeoutMs,
        headers: {
          Authorization: `Bearer ${access.token}`,
          "Content-Type": "application/merge-patch+json",
          Accept: "application/json",
          "Content-Length": Buffer.byteLength(body),
          Host: `${host}:${access.apiPort}`,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          if (res.statusCode && res.statusCode >= 200 && res.statusCode < 300) resolve();
          else reject(new Error(`labeling node ${access.nodeName}: HTTP ${res.statusCode}: ${Buffer.concat(chunks).toString().slice(0, 500)}`));
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`labeling node ${access.nodeName}: no answer from the API server within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}
