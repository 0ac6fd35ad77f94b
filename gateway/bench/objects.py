"""The bench API and its credentials, made through the portal's services and deleted after the run.

Everything a run makes is named after one prefix ``bench-<8 hex digits>``: the users
``<prefix>-provider|admin|consumer@bench.invalid``, the API (title and slug ``<prefix>``), its plan
``<prefix> free``, the application ``<prefix>`` and its API keys (named ``<prefix>…``), so
``bench_objects_delete(prefix)`` finds them all, also after a run that failed halfway.
"""

from __future__ import annotations

import secrets as secrets_module
from dataclasses import dataclass

BENCH_DOCUMENT = """\
asyncapi: 3.0.0
info:
  title: {title}
  version: 1.0.0
  description: Created by manage.py bench_gateway for one benchmark run and deleted when it ends.
channels:
  ticks:
    address: ticks/{{n}}
    description: Benchmark events; n is any string.
    parameters:
      n:
        description: Any string.
    messages:
      tick:
        payload:
          type: object
operations:
  publishTicks:
    action: send
    channel:
      $ref: '#/channels/ticks'
"""


@dataclass
class BenchObjects:
    """What ``bench_objects_create`` made: ``prefix`` (``bench-<suffix>``) names them all."""

    prefix: str
    api: str  # slug
    version: str
    application_id: int
    secrets: list[str]  # plaintext API keys, shared by subscribers
    # Keys of a second application, subscribed under a plan whose throttling policy is on with
    # limits never reached (THROTTLED_PLAN): the "gateway-throttled" target.
    throttled_secrets: list[str]


def bench_prefix() -> str:
    """A new ``bench-<8 hex digits>`` name for one run's objects."""
    return f"bench-{secrets_module.token_hex(4)}"


# The throttled plan: every limit kind on (rate, events and bytes quotas, counted both ways), so
# each delivery takes from its subscription's leases, with amounts no run reaches.
THROTTLED_PLAN = {
    "rate_limit_events": 2_000_000_000,
    "rate_limit_unit": "hour",
    "quota_events": 10**15,
    "quota_bytes": 10**18,
    "counted_directions": "both",
}


def bench_objects_create(*, prefix: str, keys: int) -> BenchObjects:
    """Create, named after ``prefix``, the bench API (published), an approved free plan without
    limits, an application subscribed to it and ``keys`` API keys, and a second application
    with ``keys`` keys under an approved plan with the throttling policy on (``THROTTLED_PLAN``),
    through portal services. Raises whatever those raise; ``bench_objects_delete(prefix)``
    removes what was made."""
    from portal.models import User
    from portal.services.apis import api_import, api_publish
    from portal.services.credentials import api_key_create
    from portal.services.subscriptions import (
        application_create,
        plan_approve,
        plan_create,
        subscription_create,
    )

    create = User.objects.create_user
    provider = create(email=f"{prefix}-provider@bench.invalid", password=None, is_provider=True)
    admin = create(email=f"{prefix}-admin@bench.invalid", password=None, is_staff=True)
    consumer = create(email=f"{prefix}-consumer@bench.invalid", password=None)
    version = api_import(
        provider=provider, content=BENCH_DOCUMENT.format(title=prefix), filename=f"{prefix}.asyncapi.yaml"
    )
    version = api_publish(api_version=version, actor=provider)
    plan = plan_create(
        api=version.api,
        name=f"{prefix} free",
        description="Benchmark plan: free, no limits.",
        requires_approval=False,
    )
    plan = plan_approve(plan=plan, approver=admin)
    application = application_create(owner=consumer, name=prefix)
    subscription_create(application=application, plan=plan)
    secrets = [api_key_create(application=application, name=prefix)[1] for _ in range(keys)]
    throttled_plan = plan_create(
        api=version.api,
        name=f"{prefix} throttled",
        description="Benchmark plan: throttling on, limits never reached.",
        requires_approval=False,
        **THROTTLED_PLAN,
    )
    throttled_plan = plan_approve(plan=throttled_plan, approver=admin)
    throttled_consumer = create(email=f"{prefix}-consumer-throttled@bench.invalid", password=None)
    throttled_application = application_create(owner=throttled_consumer, name=prefix)
    subscription_create(application=throttled_application, plan=throttled_plan)
    throttled_secrets = [
        api_key_create(application=throttled_application, name=prefix)[1] for _ in range(keys)
    ]
    return BenchObjects(
        prefix=prefix,
        api=version.api.slug,
        version=version.version,
        application_id=application.pk,
        secrets=secrets,
        throttled_secrets=throttled_secrets,
    )


def bench_keys_create(objects: BenchObjects, count: int) -> list[str]:
    """``count`` more API keys of the bench application (plaintext), e.g. for the cold storm."""
    from django.db import transaction

    from portal.models import Application
    from portal.services.credentials import api_key_create

    application = Application.objects.get(pk=objects.application_id)
    with transaction.atomic():
        return [
            api_key_create(application=application, name=f"{objects.prefix} cold")[1] for _ in range(count)
        ]


def bench_objects_delete(prefix: str) -> int:
    """Delete everything named ``prefix`` (``bench-<suffix>``): subscriptions (with their usage
    records and their throttling counters in Redis), applications (with their keys), plans, the
    API, the users. Returns rows deleted."""
    from django.db import transaction

    from gateway.throttling import throttling_counters_delete
    from portal.models import API, Application, BusinessPlan, Subscription, User

    if not prefix.startswith("bench-"):
        raise ValueError(f"{prefix!r} is not a bench prefix")
    deleted = 0
    with transaction.atomic():
        applications = Application.objects.filter(name=prefix, owner__email__startswith=prefix)
        subscriptions = Subscription.objects.filter(application__in=applications)
        throttling_counters_delete(
            subscription_ids=list(subscriptions.values_list("pk", flat=True)),
            application_ids=list(applications.values_list("pk", flat=True)),
        )
        deleted += subscriptions.delete()[0]
        deleted += applications.delete()[0]
        apis = API.objects.filter(name=prefix, provider__email__startswith=prefix)
        deleted += BusinessPlan.objects.filter(api__in=apis).delete()[0]
        deleted += apis.delete()[0]
        deleted += User.objects.filter(
            email__startswith=f"{prefix}-", email__endswith="@bench.invalid"
        ).delete()[0]
    return deleted


def bench_objects_left(prefix: str) -> int:
    """How many users, APIs, applications and keys named ``prefix`` exist (0 after clean-up)."""
    from portal.models import API, APIKey, Application, User

    return (
        User.objects.filter(email__startswith=f"{prefix}-").count()
        + API.objects.filter(name=prefix).count()
        + Application.objects.filter(name=prefix).count()
        + APIKey.objects.filter(name__startswith=prefix).count()
    )
