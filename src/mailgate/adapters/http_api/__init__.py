"""The HTTP mail API transports: Microsoft Graph (``graph.py``) and the Gmail API
(``gmail_api.py``), for mailboxes where SMTP AUTH is off (README "Delivery transports").

Both send the stored MIME message as it is and share the machinery around it: the HTTP client
(``client.py``, the one place one is made), authorized requests with a total deadline, one
token refresh on ``401``, the per-mailbox request gate and throttle window (``exchange.py``),
the redacted transcript, the JWT claims shown by the server test, the Bcc and draft helpers
(``mime.py``), and the ``ports.Transport``/``ports.Prober`` pair (``transport.py``).
"""
