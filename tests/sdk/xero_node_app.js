// A host app built on xero-node 20.0.0 (npm, unmodified), driven by tests/xero_sdks.rs.
//
// Nothing about Xero is configured: `initialize()` discovers https://identity.xero.com with
// openid-client 5 (Node's `https`), `refreshToken()` refreshes with openid-client (which
// validates the id_token against the discovered JWKS), and the API calls go to
// https://api.xero.com through axios. The environment routes it through the exporter:
//   NODE_EXTRA_CA_CERTS   the interception CA
//   HTTPS_PROXY           axios (it sends the request to the proxy in absolute form)
//   GLOBAL_AGENT_HTTP_PROXY with NODE_OPTIONS=--require global-agent/bootstrap: Node's `https`
//                         (openid-client) through a CONNECT tunnel on Node < 22.21 / 24.5
//                         (later Node: NODE_USE_ENV_PROXY=1 instead)
// With "reverse_proxy" set, the README's reverse-proxy recipe instead: `accountingApi.basePath`
// and `refreshWithRefreshToken()` through axios with HTTPS_PROXY.
//
// Reads one JSON request on stdin and prints one JSON answer:
//   {"action": "refresh" | "api" | "elsewhere", "client_id", "client_secret", "token_set",
//    "tenant", "url", "reverse_proxy"}

const fs = require("fs");
const https = require("https");
const { XeroClient } = require("xero-node");

async function main() {
  const req = JSON.parse(fs.readFileSync(0, "utf8"));
  const ts = req.token_set;
  const xero = new XeroClient({
    clientId: req.client_id,
    clientSecret: req.client_secret,
    redirectUris: ["http://localhost:5000/callback"],
    scopes: ts.scope.split(" "),
    httpTimeout: 5000,
  });
  const reverse = req.reverse_proxy;
  if (!reverse) {
    await xero.initialize();
  }
  xero.setTokenSet({
    id_token: ts.id_token,
    access_token: ts.access_token,
    refresh_token: ts.refresh_token,
    token_type: ts.token_type,
    scope: ts.scope,
    // What the app believes: valid for a while (the test may have aged it at Xero).
    expires_at: Math.floor(Date.now() / 1000) + ts.expires_in,
  });
  if (reverse) {
    xero.accountingApi.basePath = reverse + "/api.xro/2.0";
  }
  let out;
  try {
    if (req.action === "refresh") {
      const set = reverse
        ? await xero.refreshWithRefreshToken(req.client_id, req.client_secret, ts.refresh_token)
        : await xero.refreshToken();
      const token = {
        id_token: set.id_token,
        access_token: set.access_token,
        expires_in: set.expires_in,
        token_type: set.token_type,
        refresh_token: set.refresh_token,
        scope: set.scope,
      };
      out = { ok: true, token_set: token, sub: reverse ? null : set.claims().sub };
    } else if (req.action === "api") {
      const r = await xero.accountingApi.getOrganisations(req.tenant);
      out = { ok: true, organisations: r.body.organisations.length };
    } else if (req.action === "elsewhere") {
      out = await new Promise((resolve) => {
        https
          .get(req.url, (res) => {
            let body = "";
            res.on("data", (c) => (body += c));
            res.on("end", () => resolve({ ok: true, status: res.statusCode, body }));
          })
          .on("error", (e) => resolve({ ok: false, error: String(e) }));
      });
    } else {
      out = { ok: false, error: "unknown action" };
    }
  } catch (e) {
    // openid-client raises OPError (error, response); xero-node's API errors carry
    // response.statusCode and the body; axios errors carry response.status and data.
    let parsed = e;
    if (typeof e === "string") {
      try {
        parsed = JSON.parse(e);
      } catch (_) {
        parsed = { message: e };
      }
    }
    const resp = parsed.response || {};
    let body = [resp.body, resp.data, parsed.body].find((b) => b !== undefined);
    if (body !== undefined && body !== null && typeof body !== "string") {
      // The SDK parsed it; written back compactly it is the wire's JSON (same key order).
      body = JSON.stringify(body);
    }
    out = {
      ok: false,
      error: parsed.error || parsed.message || String(e),
      status: resp.statusCode || resp.status || parsed.statusCode || null,
      body: body === undefined ? null : body,
    };
  }
  console.log(JSON.stringify(out));
}

main();
