"""The OAuth2 answers that are not an e-mail server's view."""

from __future__ import annotations

from pydantic import Field

from mailgate.schemas.out.base import OutModel


class AuthorizationUrlOut(OutModel):
    authorization_url: str = Field(
        description="open it in the browser; its state is good once, for 10 minutes"
    )
