from django.contrib import admin

from analytics.models import UsageRecord

admin.site.register(UsageRecord)
