"""The Smartflow JWT: short-lived, HS256-signed, carrying the user and teams; accepted on the management API."""
from __future__ import annotations

import hashlib
import secrets
import time

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework import authentication, exceptions

ISSUER = "smartflow"
AUDIENCE = "smartflow-management"
ALGORITHM = "HS256"


def _key() -> bytes:
    # A key of its own, derived from SECRET_KEY, so a JWT cannot double as any other Django signature.
    return hashlib.sha256(b"smartflow-jwt:" + settings.SECRET_KEY.encode()).digest()


def issue(user, teams: list[str], provider: str = "") -> tuple[str, int]:
    """(token, exp): the JWT for this user, valid for SMARTFLOW_JWT_TTL_SECONDS."""
    now = int(time.time())
    exp = now + int(settings.SMARTFLOW_JWT_TTL_SECONDS)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(user.pk), "username": user.get_username(),
              "email": user.email, "teams": list(teams), "provider": provider, "staff": user.is_staff,
              "iat": now, "exp": exp, "jti": secrets.token_urlsafe(12)}
    return jwt.encode(claims, _key(), algorithm=ALGORITHM), exp


def decode(token: str) -> dict:
    return jwt.decode(token, _key(), algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                      options={"require": ["exp", "iat", "sub"]})


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("ey")


class SmartflowJWTAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <Smartflow JWT>` → the signed-in user (still active: a disabled user's JWT dies)."""

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        if header[:7].lower() != "bearer ":
            return None
        raw = header[7:].strip()
        if not looks_like_jwt(raw):
            return None  # keys are ManagementAuthentication's
        try:
            claims = decode(raw)
        except jwt.ExpiredSignatureError:
            raise exceptions.AuthenticationFailed("Your Smartflow token has expired; sign in again.")
        except jwt.PyJWTError:
            raise exceptions.AuthenticationFailed("Invalid Smartflow token; sign in again.")
        user = get_user_model().objects.filter(pk=claims["sub"], is_active=True).first()
        if user is None:
            raise exceptions.AuthenticationFailed("This account no longer has access to Smartflow.")
        return user, claims

    def authenticate_header(self, request):
        return "Bearer"
