"""Billing: usage to invoices to Stripe."""
