"""`DELETE /api/users/{id}`: erase a user (GDPR), admin scope.

The id may be the user's or one of its anonymous ids: either way the person, the canonical user with
every alias, is erased. In one transaction the audit row is written (`user_deletions`: who asked, when,
how many aliases, and the user only as a SHA-256 hash), the personal data leave the campaign deliveries
and the finished destination deliveries of the user and its aliases, and the `ForgetRecord` is produced
on the rule job's feedback topic; the transaction commits only once the broker acknowledged it, so a
503 leaves nothing done and a retry starts afresh. The job then makes the user's memberships exit and
emits the removal, on which the profile store's writer drops the profile, memberships and aliases, and
the delivery worker scrubs the deliveries of those exits once made. 202 says the erasure is under way.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, status

from server.domain.pipeline import ForgetRecord
from server.runtime.auth import REQUIRED_SCOPE, caller_id
from server.runtime.errors import NotFound
from server.runtime.fields import ApiModel
from server.runtime.routing import StorableRoute
from server.runtime.settings import ServiceSettings
from server.segment_api.routes import Store, UserIdPath, get_membership
from server.stores.deliveries import erase_recipients
from server.stores.destination_deliveries import erase_finished
from server.stores.kafka import AsyncProducer
from server.stores.postgres import Database
from server.stores.profile_store import ProfileStore
from server.stores.records import encode
from server.stores.suppressions import forget_suppressed_users
from server.stores.topics import REEVALUATIONS

ANONYMOUS_CALLER = "anonymous"  # `requested_by` when the API runs without keys

erasure = APIRouter(prefix="/api/users", tags=["users"], route_class=StorableRoute)


class ErasurePublic(ApiModel):
    user_id: str
    aliases: list[str]
    status: Literal["deleting"]
    requested_id: str
    resolved_from_alias: bool


def user_id_hash(user_id: str) -> str:
    """How an erased user appears in the audit and in what is kept of its deliveries: SHA-256, hex."""
    return hashlib.sha256(user_id.encode()).hexdigest()


async def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


async def get_producer(request: Request) -> AsyncProducer:
    return (await get_membership(request)).producer  # the app's one producer


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


Db = Annotated[Database, Depends(get_db)]
Producer = Annotated[AsyncProducer, Depends(get_producer)]
Settings = Annotated[ServiceSettings, Depends(get_settings)]


async def known(store: ProfileStore, user_id: str) -> bool:
    """Whether the store holds anything of `user_id`: a profile or a membership."""
    return await store.get_profile(user_id) is not None or bool(await store.user_memberships(user_id))


@erasure.delete(
    "/{user_id}", status_code=status.HTTP_202_ACCEPTED, response_model=ErasurePublic,
    summary="Erase a user (GDPR): profile, memberships, aliases and delivery personal data",
    openapi_extra={REQUIRED_SCOPE: "admin"},  # irreversible
    responses={404: {"description": "No profile, membership or alias has this id"},
               503: {"description": "The broker did not acknowledge the erasure; nothing was done, retry"}})
async def erase_user(user_id: UserIdPath, request: Request, store: Store, db: Db, producer: Producer,
                     settings: Settings) -> ErasurePublic:
    canonical = (await store.canonical_ids([user_id])).get(user_id, user_id)
    aliases = await store.aliases_of(canonical)
    if canonical == user_id and not aliases and not await known(store, user_id):
        raise NotFound(f"no user '{user_id}': no profile, membership or alias has this id")
    now = datetime.now(UTC)
    async with db.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO user_deletions (user_id_hash, requested_by, requested_at, aliases) VALUES (%s, %s, %s, %s)",
            (user_id_hash(canonical), caller_id(request) or ANONYMOUS_CALLER, now, len(aliases)))
        await erase_recipients(conn, [canonical, *aliases])
        await forget_suppressed_users(conn, [canonical, *aliases])
        await erase_finished(conn, [canonical, *aliases])
        # DependencyUnavailable here rolls all of it back
        await producer.send(settings.topic(REEVALUATIONS), canonical, encode(ForgetRecord(canonical, now)))
    return ErasurePublic(user_id=canonical, aliases=aliases, status="deleting", requested_id=user_id,
                         resolved_from_alias=canonical != user_id)
