"""The SMTP submission listener: ``listener`` (aiosmtpd protocol, sockets), ``replies``."""
