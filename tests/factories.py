"""factory_boy factories for the portal's models."""

from __future__ import annotations

import factory

from portal.models import API, APIVersion, Application, BusinessPlan, Channel, Operation, Subscription, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")

    @factory.post_generation
    def password(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        self.set_password(extracted or "correct horse battery")
        if create:
            self.save(update_fields=["password"])


class APIFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = API

    provider = factory.SubFactory(UserFactory, is_provider=True)
    name = factory.Sequence(lambda n: f"Ticker {n}")
    slug = factory.Sequence(lambda n: f"ticker-{n}")
    status = API.Status.PUBLISHED


class APIVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = APIVersion

    api = factory.SubFactory(APIFactory)
    version = "1.0.0"
    asyncapi_version = "3.0.0"
    status = APIVersion.Status.PUBLISHED
    document = factory.LazyFunction(lambda: {"asyncapi": "3.0.0", "info": {"title": "t", "version": "1.0.0"}})
    source = "asyncapi: 3.0.0"


class ChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Channel

    api_version = factory.SubFactory(APIVersionFactory)
    key = factory.Sequence(lambda n: f"channel{n}")
    address = "prices/{symbol}"
    parameters = factory.LazyFunction(lambda: {"symbol": {"enum": ["ACME", "GLOBEX"]}})


class OperationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Operation

    channel = factory.SubFactory(ChannelFactory)
    key = "receivePrice"
    action = Operation.Action.RECEIVE


class BusinessPlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BusinessPlan

    api = factory.SubFactory(APIFactory)
    name = factory.Sequence(lambda n: f"Plan {n}")
    is_approved = True


class ApplicationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Application

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"App {n}")


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    application = factory.SubFactory(ApplicationFactory)
    plan = factory.SubFactory(BusinessPlanFactory)
    api = factory.SelfAttribute("plan.api")
    status = Subscription.Status.ACTIVE
