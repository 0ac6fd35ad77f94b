"""OAuth2 scopes for django-oauth-toolkit: what an application may ask for comes from its
subscriptions (placeholder until the credentials work lands; see docs/credentials.md)."""

from __future__ import annotations

from typing import Any

from oauth2_provider.scopes import BaseScopes


class SubscriptionScopes(BaseScopes):
    """Scopes backend: the available and default scopes of an OAuth2 client."""

    def get_all_scopes(self) -> dict[str, str]:
        return {}

    def get_available_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        return []

    def get_default_scopes(
        self, application: Any = None, request: Any = None, *args: Any, **kwargs: Any
    ) -> list[str]:
        return []
