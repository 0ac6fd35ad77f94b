"""Portal test helpers: a rival request that wins a race for a unique name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db.models import QuerySet


@pytest.fixture
def rival_creates(monkeypatch) -> Callable[..., None]:
    """``rival_creates(factory, **fields)``: the next ``exists()`` check on the factory's model
    finds nothing, and a rival request inserts ``factory(**fields)`` right after it, as when
    two requests for the same name pass the services' duplicate check at once."""

    def arm(factory: Any, **fields: Any) -> None:
        model = factory._meta.model
        original = QuerySet.exists

        def exists(queryset: QuerySet[Any]) -> bool:
            if queryset.model is not model:
                return original(queryset)
            monkeypatch.setattr(QuerySet, "exists", original)
            found = original(queryset)
            factory(**fields)
            return found

        monkeypatch.setattr(QuerySet, "exists", exists)

    return arm
