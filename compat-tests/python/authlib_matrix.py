"""The Authlib runners of the routing matrix (compat-tests/tests/compat/matrix.rs): one command per
grant, each done the way Authlib's users do it (OAuth2Session), printing the token response.

Usage: python authlib_matrix.py GRANT < input.json; prints {"tokens": {...}}. A protocol failure
exits non-zero with the error on stderr; the matrix records the cell as failed with that text.

The device grant (RFC 8628): Authlib has no device-flow client (`authlib.oauth2.rfc8628` is the
server side only), so `device` does what an Authlib user does: the device authorization request
through the OAuth2Session, then `fetch_token(grant_type=DEVICE_CODE, device_code=...)` polled at the
server's interval (`authorization_pending` waits, `slow_down` adds 5 s) while a thread approves the
code on the verification page (`browse`).
"""

import html
import json
import os
import re
import sys
import threading
import time
from urllib.parse import urljoin

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"

# The test nodes are plain http on 127.0.0.N.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"


def metadata(issuer):
    answer = requests.get(issuer + "/.well-known/oauth-authorization-server", timeout=30)
    answer.raise_for_status()
    return answer.json()


def hidden(page, name):
    match = re.search(r'name="%s"[^>]*value="([^"]*)"' % name, page)
    return html.unescape(match.group(1)) if match else None


def browse(start, given):
    """Follows redirects by hand and submits the login, consent and device forms until the redirect
    URI (returned) or, without one, a page with no form (its HTML returned)."""
    session = requests.Session()
    url, data = start, None
    redirect_uri = given.get("redirect_uri")
    for _ in range(20):
        if redirect_uri and url.startswith(redirect_uri):
            return url
        if data is None:
            answer = session.get(url, allow_redirects=False, timeout=30)
        else:
            answer = session.post(url, data=data, allow_redirects=False, timeout=30)
        if 300 <= answer.status_code < 400:
            url, data = urljoin(url, answer.headers["location"]), None
            continue
        if answer.status_code != 200:
            raise RuntimeError("%s answered %s: %s" % (url, answer.status_code, answer.text[:300]))
        page = answer.text
        action = re.search(r'<form[^>]*action="([^"]*)"', page)
        if not action:
            if redirect_uri:
                raise RuntimeError("no form on %s: %s" % (url, page[:300]))
            return page
        data = {}
        for name in ("csrf_token", "request", "user_code"):
            value = hidden(page, name)
            if value is not None:
                data[name] = value
        if 'type="password"' in page:
            data.update(username=given["username"], password=given["password"])
        elif 'name="decision" value="approve"' in page:
            data["decision"] = "approve"
        elif 'name="user_code"' in page:
            if not data.get("user_code"):
                data["user_code"] = given["user_code"]
        else:
            data["decision"] = "allow"
        url = urljoin(url, html.unescape(action.group(1)))
    raise RuntimeError("too many hops from %s" % start)


def client_credentials(given):
    session = OAuth2Session(
        given["client_id"], given["client_secret"], token_endpoint_auth_method="client_secret_basic",
        scope=given["scope"],
    )
    return session.fetch_token(metadata(given["issuer"])["token_endpoint"], grant_type="client_credentials")


def authorization_code(given):
    found = metadata(given["issuer"])
    session = OAuth2Session(
        given["client_id"], redirect_uri=given["redirect_uri"], scope=given["scope"],
        token_endpoint_auth_method="none", code_challenge_method="S256",
    )
    verifier = generate_token(48)
    url, state = session.create_authorization_url(
        found["authorization_endpoint"], code_verifier=verifier, nonce=generate_token(20)
    )
    back = browse(url, given)
    # Authlib checks `state` against the one it made and sends the PKCE verifier.
    return session.fetch_token(found["token_endpoint"], authorization_response=back, state=state, code_verifier=verifier)


def refresh(given):
    session = OAuth2Session(given["client_id"], token_endpoint_auth_method="none")
    return session.refresh_token(metadata(given["issuer"])["token_endpoint"], refresh_token=given["refresh_token"])


def token_exchange(given):
    session = OAuth2Session(
        given["client_id"], given["client_secret"], token_endpoint_auth_method="client_secret_basic"
    )
    return session.fetch_token(
        metadata(given["issuer"])["token_endpoint"],
        grant_type=EXCHANGE,
        subject_token=given["subject_token"],
        subject_token_type=given["subject_token_type"],
        scope=given["scope"],
    )


def device(given):
    found = metadata(given["issuer"])
    session = OAuth2Session(given["client_id"], scope=given["scope"], token_endpoint_auth_method="none")
    answer = session.post(
        found["device_authorization_endpoint"],
        data={"client_id": given["client_id"], "scope": given["scope"]},
        withhold_token=True,
        timeout=30,
    )
    if answer.status_code != 200:
        raise RuntimeError("device authorization answered %s: %s" % (answer.status_code, answer.text[:300]))
    started = answer.json()
    approval = {}

    def approve():
        try:
            page = started.get("verification_uri_complete") or started["verification_uri"]
            approval["page"] = browse(page, dict(given, user_code=started["user_code"]))
        except Exception as error:  # reported by the polling loop
            approval["error"] = error

    approver = threading.Thread(target=approve, daemon=True)
    approver.start()
    interval = started.get("interval", 5)
    deadline = time.monotonic() + min(started["expires_in"], 90)
    while time.monotonic() < deadline:
        time.sleep(interval)
        if "error" in approval:
            raise RuntimeError("approving on the device page: %s" % approval["error"])
        try:
            token = session.fetch_token(
                found["token_endpoint"], grant_type=DEVICE_CODE, device_code=started["device_code"]
            )
        except OAuthError as error:
            if error.error == "authorization_pending":
                continue
            if error.error == "slow_down":
                interval += 5
                continue
            raise
        approver.join(30)
        if "You approved the request" not in approval.get("page", ""):
            raise RuntimeError("a token although the device page did not approve: %s" % approval)
        return token
    raise RuntimeError("no token before the deadline; the approval: %s" % approval)


GRANTS = {
    "client_credentials": client_credentials,
    "authorization_code": authorization_code,
    "refresh": refresh,
    "token_exchange": token_exchange,
    "device": device,
}


def main():
    grant = GRANTS.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if grant is None:
        sys.exit("usage: authlib_matrix.py {%s}" % "|".join(GRANTS))
    print(json.dumps({"tokens": dict(grant(json.load(sys.stdin)))}))


if __name__ == "__main__":
    main()
