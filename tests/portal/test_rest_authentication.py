from __future__ import annotations

import base64


def basic(email: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{email}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def test_basic_auth_with_email_and_password(client, bob):
    assert client.get("/api/v1/applications/", **basic(bob.email, "correct horse battery")).status_code == 200
    assert client.get("/api/v1/applications/", **basic(bob.email, "wrong")).status_code == 401


def test_password_guessing_is_rate_limited_like_the_sign_in_page(client, bob):
    statuses = [
        client.get("/api/v1/applications/", **basic(bob.email, f"guess{n}")).status_code for n in range(8)
    ]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    # Even the right password is refused until the window passes: guessing gains nothing.
    response = client.get("/api/v1/applications/", **basic(bob.email, "correct horse battery"))
    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.json()["detail"]


def test_nul_in_the_basic_user_id_or_password_answers_401(client, bob):
    # PostgreSQL text cannot hold NUL: looking the user up raised DataError, a 500.
    for credentials in ("a\x00b@x:y", f"{bob.email}\x00:correct horse battery", f"{bob.email}:x\x00y"):
        token = base64.b64encode(credentials.encode()).decode()
        response = client.get("/api/v1/applications/", HTTP_AUTHORIZATION=f"Basic {token}")
        assert response.status_code == 401, credentials


def test_basic_auth_works_while_the_cache_holding_the_sign_in_limit_is_down(client, bob, settings):
    """The sign-in rate limit lives in the cache (Redis in production). With the cache's Redis
    unreachable (a port nothing listens on), credentials are still checked: no 500."""
    from tests.fixtures.servers import free_port

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    assert client.get("/api/v1/applications/", **basic(bob.email, "correct horse battery")).status_code == 200
    assert client.get("/api/v1/applications/", **basic(bob.email, "wrong")).status_code == 401
