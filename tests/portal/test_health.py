from __future__ import annotations


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_database_rabbitmq_and_redis(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {"database": True, "rabbitmq": True, "redis": True}


def test_readyz_names_rabbitmq_when_it_is_down(client, db, settings):
    settings.AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["rabbitmq"]
