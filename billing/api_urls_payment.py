"""URL stub, filled in by issue 8's work."""

from __future__ import annotations

urlpatterns: list = []
