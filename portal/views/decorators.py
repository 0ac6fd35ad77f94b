"""Role checks for portal views: anonymous users go to the sign-in page, others get a 403 page."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

View = Callable[..., HttpResponse]


def _role_required(check: Callable[[Any], bool], role: str, explanation: str) -> Callable[[View], View]:
    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not check(request.user):
                context = {"role": role, "explanation": explanation}
                return render(request, "portal/forbidden.html", context, status=403)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


provider_required = _role_required(
    lambda user: user.is_provider,
    "provider",
    "Publishing APIs needs a provider account. Ask a platform admin to make you a provider.",
)
staff_required = _role_required(
    lambda user: user.is_staff,
    "admin",
    "Approving plans and subscriptions is for platform admins.",
)
