"""Webhooks (README "Webhooks"): tenants' endpoints (``webhooks``) and the dispatcher that
delivers the event outbox to them (``dispatcher``). Events are written by the hook in
``adapters/db/events.py``, in the transaction of the change that causes them."""

from mailgate.services.events.dispatcher import WebhookDispatcher
from mailgate.services.events.webhooks import Webhooks

__all__ = ["WebhookDispatcher", "Webhooks"]
