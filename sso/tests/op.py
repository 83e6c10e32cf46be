"""A small but real OpenID Provider on loopback, for the SSO tests.

It serves discovery, JWKS (with key rotation), an authorize endpoint that
auto-consents the chosen test user, and a token endpoint that checks the client
secret (basic or post), the redirect URI, single use of the code and PKCE S256,
then issues RS256 id_tokens. Entra-style paths (``/{tenant}/v2.0/...``,
``/{tenant}/discovery/v2.0/keys``, ``/{tenant}/oauth2/v2.0/...``) are served
too, so the derived Entra endpoints can be exercised. Knobs on the instance
let a test make the IdP misbehave (wrong audience, expired or tampered tokens,
foreign keys, errors at authorize).
"""
from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "smartflow-test-client"
CLIENT_SECRET = "op-test-secret-value"
ENTRA_TENANT = "11111111-2222-3333-4444-555555555555"


def new_key() -> tuple[str, rsa.RSAPrivateKey]:
    return "k-" + secrets.token_hex(4), rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class OpUser:
    sub: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)
    overage: bool = False  # Entra: groups replaced by a Graph link


def default_users() -> dict[str, OpUser]:
    return {
        "alice": OpUser("sub-alice", "alice@example.com", "Alice Example", ["research", "platform"]),
        "bob": OpUser("sub-bob", "bob@example.com", "Bob Example", ["research"]),
        "carol": OpUser("sub-carol", "carol@example.com", "Carol Example", []),
        "dave": OpUser("sub-dave", "dave@example.com", "Dave Example", [], overage=True),
    }


class OpenIDProvider:
    def __init__(self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET):
        self.client_id, self.client_secret = client_id, client_secret
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = [new_key()]
        self.reset()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self):
        self.users = default_users()
        self.current_user = "alice"
        self.codes: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.claim_overrides: dict = {}  # merged into the next id_tokens
        self.sign_with_foreign_key = False
        self.tamper_payload = False
        self.authorize_error: tuple[str, str] | None = None
        self.redirect_uris: list[str] = []  # empty: any redirect URI is accepted
        # Rotation lives across tests only if a test rotates; start each test from one key.
        self.keys = self.keys[-1:]
        self.published = {kid for kid, _ in self.keys}

    # --- lifecycle -----------------------------------------------------------
    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- knobs ---------------------------------------------------------------
    def rotate(self, keep_old: bool = True) -> str:
        """A new signing key, published at once; the old one stays published unless keep_old is False."""
        kid, key = new_key()
        self.keys.append((kid, key))
        self.published = ({k for k, _ in self.keys} if keep_old else {kid})
        return kid

    def entra_issuer(self, tenant: str = ENTRA_TENANT) -> str:
        return f"{self.url}/{tenant}/v2.0"

    # --- documents -----------------------------------------------------------
    def jwks(self) -> dict:
        keys = []
        for kid, key in self.keys:
            if kid in self.published:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def discovery(self, prefix: str) -> dict:
        if prefix:  # Entra v2.0 layout
            issuer = f"{self.url}{prefix}/v2.0"
            base = f"{self.url}{prefix}"
            return {"issuer": issuer, "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token", "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "response_types_supported": ["code"], "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                    "subject_types_supported": ["pairwise"]}
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                "userinfo_endpoint": f"{self.url}/userinfo", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "email", "profile", "groups"]}

    # --- endpoints -----------------------------------------------------------
    def authorize(self, prefix: str, q: dict) -> tuple[int, dict, dict | None]:
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            return 400, {}, {"error": "invalid_client", "error_description": "unknown client_id"}
        if self.redirect_uris and redirect_uri not in self.redirect_uris:
            return 400, {}, {"error": "invalid_request", "error_description": "redirect_uri not registered"}
        back = {"state": q.get("state", "")}
        if self.authorize_error:
            error, description = self.authorize_error
            self.authorize_error = None
            return 302, {"Location": f"{redirect_uri}?{urlencode({**back, 'error': error, 'error_description': description})}"}, None
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return 302, {"Location": f"{redirect_uri}?{urlencode({**back, 'error': 'invalid_request', 'error_description': 'PKCE S256 required'})}"}, None
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"redirect_uri": redirect_uri, "nonce": q.get("nonce"), "challenge": q["code_challenge"],
                            "user": self.current_user, "prefix": prefix, "scope": q.get("scope", ""),
                            "expires": time.time() + 60, "used": False}
        return 302, {"Location": f"{redirect_uri}?{urlencode({'code': code, **back})}"}, None

    def token(self, prefix: str, form: dict, headers) -> tuple[int, dict]:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        method = "post"
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            method = "basic"
        self.requests[-1]["client_auth"] = method
        if client_id != self.client_id or secret != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        grant = self.codes.get(form.get("code", ""))
        if grant is None or grant["used"] or grant["expires"] < time.time() or grant["prefix"] != prefix:
            if grant is not None:
                grant["used"] = True
            return 400, {"error": "invalid_grant", "error_description": "the code is unknown, used or expired"}
        grant["used"] = True  # RFC 6749 §4.1.2: a code is single use
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri does not match"}
        verifier = form.get("code_verifier", "")
        if not verifier or create_s256_code_challenge(verifier) != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 3600,
                     "id_token": self.id_token(grant), "scope": grant["scope"]}

    def id_token(self, grant: dict) -> str:
        user = self.users[grant["user"]]
        now = int(time.time())
        issuer = f"{self.url}{grant['prefix']}/v2.0" if grant["prefix"] else self.url
        claims = {"iss": issuer, "sub": user.sub, "aud": self.client_id, "iat": now, "exp": now + 600,
                  "nonce": grant["nonce"], "email": user.email, "name": user.name,
                  "preferred_username": user.email}
        if user.overage:
            claims["_claim_names"] = {"groups": "src1"}
            claims["_claim_sources"] = {"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}
        else:
            claims["groups"] = list(user.groups)
        claims.update(self.claim_overrides)
        kid, key = self.keys[-1]
        if self.sign_with_foreign_key:
            kid, key = new_key()
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        if self.tamper_payload:  # swap in a payload with more groups, keeping the original signature
            head, _, sig = token.split(".")
            forged = {**claims, "groups": ["admins"] + list(user.groups)}
            body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
            token = f"{head}.{body}.{sig}"
        return token

    def _handler(self):
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str, form: dict):
                parts = urlsplit(self.path)
                path, q = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
                op.requests.append({"method": method, "path": path, "query": q, "form": form})
                prefix = ""
                if path.startswith((f"/{ENTRA_TENANT}/", "/other-tenant/")):
                    prefix, path = "/" + path.split("/")[1], "/" + "/".join(path.split("/")[2:])
                    path = {"/v2.0/.well-known/openid-configuration": "/.well-known/openid-configuration",
                            "/discovery/v2.0/keys": "/jwks", "/oauth2/v2.0/authorize": "/authorize",
                            "/oauth2/v2.0/token": "/token"}.get(path, path)
                if method == "GET" and path == "/.well-known/openid-configuration":
                    return self._send(200, op.discovery(prefix))
                if method == "GET" and path == "/jwks":
                    return self._send(200, op.jwks())
                if method == "GET" and path == "/authorize":
                    status, headers, body = op.authorize(prefix, q)
                    return self._send(status, body, headers)
                if method == "POST" and path == "/token":
                    status, body = op.token(prefix, form, self.headers)
                    return self._send(status, body)
                return self._send(404, {"error": "not_found"})

            def do_GET(self):
                self._route("GET", {})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                self._route("POST", {k: v[0] for k, v in parse_qs(raw).items()})

        return Handler
