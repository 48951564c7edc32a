"""Authlib (an independent Python OAuth / OIDC library) against meshgate: RFC 8414 and OpenID
Connect Discovery metadata validation, and the refresh_token grant with rotation and reuse.

Usage: python authlib_compat.py < input.json; prints one JSON object. Expected protocol failures
are reported inside it; anything unexpected exits non-zero with a traceback.
"""

import json
import os
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata


def validate(kind, url, expected_issuer):
    document = requests.get(url, timeout=30).json()
    metadata = kind(document)
    try:
        # OpenIDProviderMetadata runs the RFC 8414 checks too (it extends that class).
        metadata.validate()
        error = None
    except ValueError as e:
        error = str(e)
    return {"issuer_matches": document.get("issuer") == expected_issuer, "error": error, "document": document}


def main():
    given = json.load(sys.stdin)
    out = {
        "rfc8414": validate(AuthorizationServerMetadata, given["rfc8414_url"], given["issuer"]),
        "oidc": validate(OpenIDProviderMetadata, given["oidc_url"], given["issuer"]),
    }
    # The token endpoint of the test server is plain http on 127.0.0.1.
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    session = OAuth2Session(given["client_id"], token_endpoint_auth_method="none")
    first = session.refresh_token(given["token_endpoint"], refresh_token=given["refresh_token"])
    out["refreshed"] = dict(first)
    second = session.refresh_token(given["token_endpoint"], refresh_token=first["refresh_token"])
    out["refreshed_again"] = dict(second)
    try:
        session.refresh_token(given["token_endpoint"], refresh_token=given["refresh_token"])
        out["reuse"] = {"ok": True}
    except Exception as e:  # authlib raises OAuthError with the RFC 6749 error code
        out["reuse"] = {"ok": False, "error": getattr(e, "error", None), "description": str(e)}
    try:
        session.refresh_token(given["token_endpoint"], refresh_token=second["refresh_token"])
        out["after_reuse"] = {"ok": True}
    except Exception as e:
        out["after_reuse"] = {"ok": False, "error": getattr(e, "error", None), "description": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
