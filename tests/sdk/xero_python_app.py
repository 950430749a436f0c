"""A host app built on xero-python 15.2.0 (PyPI, unmodified), driven by tests/xero_sdks.rs.

xero-python reads no environment variable itself: xero_python/rest.py (15.2.0) builds a
urllib3 ProxyManager from `Configuration.proxy` and trusts certifi's bundle unless
`Configuration.ssl_ca_cert` is set. So the app, as a deployment would, passes its environment
(`HTTPS_PROXY`, `SSL_CERT_FILE`) to those two settings; nothing else about Xero is configured:
the SDK refreshes at its own `TokenApi.refresh_token_url` (https://identity.xero.com) and calls
its own API base (https://api.xero.com).

With "reverse_proxy" set, the app instead follows the reverse-proxy recipe of the README:
`TokenApi.refresh_token_url` (a class attribute) and `AccountingApi(base_url=...)` point at the
exporter's proxy listener, and no HTTPS proxy is used.

Reads one JSON request on stdin and prints one JSON answer:
  {"action": "refresh" | "api" | "elsewhere", "client_id", "client_secret", "token_set",
   "tenant", "url", "reverse_proxy"}
"""

import json
import os
import sys
import time

from xero_python.accounting import AccountingApi
from xero_python.api_client import ApiClient, Configuration
from xero_python.api_client.oauth2 import OAuth2Token, TokenApi
from xero_python.exceptions import ApiException


def main():
    req = json.load(sys.stdin)
    config = Configuration(
        oauth2_token=OAuth2Token(
            client_id=req["client_id"], client_secret=req["client_secret"]
        )
    )
    reverse = req.get("reverse_proxy")
    api_base = None
    if reverse:
        TokenApi.refresh_token_url = reverse + "/connect/token"
        api_base = reverse + "/api.xro/2.0"
    else:
        config.proxy = os.environ.get("HTTPS_PROXY")
        config.ssl_ca_cert = os.environ.get("SSL_CERT_FILE")
    store = {}
    api_client = ApiClient(
        config,
        pool_threads=1,
        oauth2_token_getter=lambda: store.get("token"),
        oauth2_token_saver=lambda token: store.__setitem__("token", token),
    )
    ts = req["token_set"]
    api_client.set_oauth2_token(
        {
            "access_token": ts["access_token"],
            "refresh_token": ts["refresh_token"],
            "id_token": ts["id_token"],
            "token_type": ts["token_type"],
            "scope": ts["scope"].split(),
            "expires_in": ts["expires_in"],
            # What the app believes: valid for a while (the test may have aged it at Xero).
            "expires_at": time.time() + ts["expires_in"],
        }
    )
    try:
        if req["action"] == "refresh":
            token = dict(api_client.refresh_oauth2_token())
            # What the SDK got on the wire, without its two additions (OAuth2Token.
            # fetch_access_token splits `scope` into a list and computes `expires_at`).
            token["scope"] = " ".join(token["scope"])
            expires_at = token.pop("expires_at")
            out = {"ok": True, "token_set": token, "expires_at": expires_at}
        elif req["action"] == "api":
            orgs = AccountingApi(api_client, base_url=api_base).get_organisations(
                req["tenant"]
            )
            out = {"ok": True, "organisations": len(orgs.organisations or [])}
        elif req["action"] == "elsewhere":
            r = api_client.rest_client.pool_manager.request("GET", req["url"])
            out = {"ok": True, "status": r.status, "body": r.data.decode()}
        else:
            out = {"ok": False, "error": "unknown action"}
    except ApiException as e:
        body = e.body.decode() if isinstance(e.body, bytes) else e.body
        out = {"ok": False, "status": e.status, "body": body}
    except Exception as e:  # the SDK raises a bare Exception for a refused refresh
        out = {"ok": False, "error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
