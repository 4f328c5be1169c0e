"""The SMTP transport, on aiosmtplib, one job per module (import from the module itself):

- ``replies``     SmtpReply (RFC 3463 enhanced codes), classification, SendResult
- ``errors``      TransportError with its ``FailureKind``; library/socket/TLS errors -> it
- ``auth``        AUTH (RFC 4954): PLAIN, LOGIN, XOAUTH2 and Gmail's 334 challenge
- ``transcript``  the dialogue for the admin, credentials redacted
- ``tls``         the TLS context of a configuration, certificate errors described
- ``wire``        aiosmtplib with a transcript and the MAIL/RCPT/DATA fast paths (version pin)
- ``transaction`` one MAIL/RCPT/DATA transaction on an open connection
- ``pipelining``  the same transaction pipelined (RFC 2920), with a reply reader of its own
- ``session``     SmtpSession: connect, secure, greet, authenticate, send, close
- ``transport``   SmtpTransport: the ``ports.Transport`` and ``ports.Prober`` on a session
"""
