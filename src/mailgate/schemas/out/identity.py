"""Tenants, users, sign-in and API keys as the API shows them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mailgate.schemas.out.base import OutModel, RoleName, Timestamp


class TenantOut(OutModel):
    name: str
    display_name: str
    created_at: Timestamp
    updated_at: Timestamp


class TenantList(OutModel):
    items: list[TenantOut]


class UserOut(OutModel):
    username: str
    email: str | None
    system_admin: bool
    roles: dict[str, RoleName] = Field(description="tenant name -> role")
    created_at: Timestamp


class UserList(OutModel):
    items: list[UserOut]


class LoginOut(OutModel):
    token: str = Field(description="the session token, for 'Authorization: Bearer'")
    csrf_token: str = Field(description="echo it in X-CSRF-Token when using the cookie")
    user: UserOut


class SignedInUserOut(UserOut):
    kind: Literal["user"]
    csrf_token: str | None


class SignedInApiKeyOut(OutModel):
    kind: Literal["api_key"]
    name: str
    system_admin: bool
    roles: dict[str, RoleName] = Field(description="tenant name -> role")


MeOut = Annotated[SignedInUserOut | SignedInApiKeyOut, Field(discriminator="kind")]


class ApiKeyOut(OutModel):
    id: str
    name: str
    role: RoleName
    created_at: Timestamp
    created_by: str | None
    last_used_at: Timestamp | None


class ApiKeyList(OutModel):
    items: list[ApiKeyOut]


class NewApiKeyOut(ApiKeyOut):
    token: str = Field(description="shown only in this answer; only its hash is stored")


class PasswordChangedOut(OutModel):
    status: Literal["ok"]
    username: str
    detail: str
