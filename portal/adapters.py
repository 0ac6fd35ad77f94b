"""django-allauth adapters: where each kind of user lands after signing in."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest
from django.urls import reverse


class AccountAdapter(DefaultAccountAdapter):
    """Sends admins to the approval queue and providers to their APIs; consumers keep
    ``LOGIN_REDIRECT_URL`` (their applications).

    allauth asks the adapter only when the request carries no explicit ``?next=``
    (``allauth.account.utils.get_login_redirect_url``), so a sign-in started from a page
    still returns to that page. New sign-ups are consumers and go to ``LOGIN_REDIRECT_URL``
    too, through ``get_signup_redirect_url``.
    """

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        user = request.user
        # Someone who is both has approvals waiting on them; that queue comes first.
        if user.is_staff:
            return reverse("portal:approvals")
        if getattr(user, "is_provider", False):
            return reverse("portal:provider_api_list")
        return super().get_login_redirect_url(request)
