"""REST API authentication: HTTP Basic (RFC 7617) with email and password, rate limited.

DRF's ``BasicAuthentication`` checks passwords without any limit, so a script could guess a
password that the portal's sign-in page (django-allauth) would lock after a few tries. This class
counts failures with allauth's rate limiter under the same ``login_failed`` rule
(``ACCOUNT_RATE_LIMITS``, default 10 per minute per IP and 5 per 5 minutes per email, kept in
Django's cache): the per-IP budget is shared with the sign-in page.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.core.internal import ratelimit
from django.contrib.auth import authenticate
from drf_spectacular.authentication import BasicScheme
from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication
from rest_framework.request import Request

log = logging.getLogger(__name__)


class RateLimitedBasicAuthentication(BasicAuthentication):
    """HTTP Basic with the email as user id; too many failures answer 429 (``Throttled``).

    A success does not count: like allauth's sign-in, its consumption is rolled back. When the
    cache holding the counts (Redis) is unreachable, credentials are checked without the limit
    (a warning is logged) rather than failing every API call with a 500.
    """

    def authenticate_credentials(self, userid: str, password: str, request: Request | None = None) -> Any:
        if "\x00" in userid or "\x00" in password:
            # No account has NUL in its email (PostgreSQL text cannot hold it, and looking it up
            # would raise DataError, a 500) or its password (forms refuse it).
            raise exceptions.AuthenticationFailed("Invalid username/password.")
        django_request = request._request if request is not None else None
        usage = None
        if django_request is not None:
            # allauth's public ``consume`` skips GET requests, which are most API calls: use the
            # pinned package's own implementation with ``limit_get``.
            try:
                usage = ratelimit.consume(
                    django_request,
                    app="allauth.account",
                    action="login_failed",
                    key=userid.lower(),
                    limit_get=True,
                )
            except Exception as exc:  # noqa: BLE001 - the cache (Redis) is down: sign in without the limit
                log.warning("Sign-in rate limit not applied (cache unreachable: %r)", exc)
                usage = False
            if usage is None:
                raise exceptions.Throttled(detail="Too many failed sign-in attempts; try again later.")
        user = authenticate(django_request, email=userid, password=password)
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed("Invalid username/password.")
        if usage:
            try:
                usage.rollback()
            except Exception as exc:  # noqa: BLE001 - the cache went away meanwhile
                log.warning("Sign-in rate limit not rolled back (cache unreachable: %r)", exc)
        return (user, None)


class RateLimitedBasicScheme(BasicScheme):
    """Describes ``RateLimitedBasicAuthentication`` in the OpenAPI schema as HTTP Basic."""

    target_class = RateLimitedBasicAuthentication
