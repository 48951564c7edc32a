"""The Authlib runners of the routing matrix (compat-tests/tests/compat/matrix.rs): one command per
grant, each done the way Authlib's users do it (OAuth2Session), printing the token response.

Usage: python authlib_matrix.py GRANT < input.json; prints {"tokens": {...}}. A protocol failure
exits non-zero with the error on stderr; the matrix records the cell as failed with that text.
"""

import html
import json
import os
import re
import sys
from urllib.parse import urljoin

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.common.security import generate_token

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"

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
    """Follows redirects by hand and submits the login and consent forms until the redirect URI."""
    session = requests.Session()
    url, data = start, None
    for _ in range(20):
        if url.startswith(given["redirect_uri"]):
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
            raise RuntimeError("no form on %s: %s" % (url, page[:300]))
        data = {}
        for name in ("csrf_token", "request"):
            value = hidden(page, name)
            if value is not None:
                data[name] = value
        if 'type="password"' in page:
            data.update(username=given["username"], password=given["password"])
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


GRANTS = {
    "client_credentials": client_credentials,
    "authorization_code": authorization_code,
    "refresh": refresh,
    "token_exchange": token_exchange,
}


def main():
    grant = GRANTS.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if grant is None:
        sys.exit("usage: authlib_matrix.py {%s}" % "|".join(GRANTS))
    print(json.dumps({"tokens": dict(grant(json.load(sys.stdin)))}))


if __name__ == "__main__":
    main()
