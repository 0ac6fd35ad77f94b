from django.contrib import admin

from billing.models import BillingAccount, Invoice, InvoiceLine

admin.site.register([BillingAccount, Invoice, InvoiceLine])
