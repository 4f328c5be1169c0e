"""mailgate: a multi-tenant outbound e-mail gateway."""

__version__ = "0.1.0"
