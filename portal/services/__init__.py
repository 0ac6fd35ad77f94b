"""Portal services: keyword-only functions for work that spans models (HackSoft style).

- ``portal.services.apis``: importing AsyncAPI documents into APIs and versions, publishing.
- ``portal.services.subscriptions``: applications, subscriptions, approvals, API keys.
"""
