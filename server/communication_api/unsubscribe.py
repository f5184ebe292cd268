"""One-click unsubscribe (RFC 8058): the link every mail carries, and the pages behind it.

`POST /unsubscribe/{token}` with the body `List-Unsubscribe=One-Click` (form-urlencoded or multipart, as
RFC 8058 allows) unsubscribes at once: no login, no confirmation, since that is what a mailbox provider's
"Unsubscribe" button sends. `GET` only shows a page with a button that sends the same POST: link
scanners fetch every URL in a mail, and a GET must not unsubscribe anyone.
"""

from __future__ import annotations

import html
import urllib.parse
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from server.communication_api.routes import Ledger
from server.communication_api.suppressions import Suppressions
from server.runtime.routing import StorableRoute
from server.runtime.tokens import InvalidUnsubscribeToken, Unsubscribe, UnsubscribeLinks
from server.stores.suppressions import SuppressionReason

ONE_CLICK_FIELD, ONE_CLICK_VALUE = "List-Unsubscribe", "One-Click"
MAX_FORM_BYTES = 8 * 1024


def get_links(request: Request) -> UnsubscribeLinks:
    return request.app.state.unsubscribe_links  # type: ignore[no-any-return]


Links = Annotated[UnsubscribeLinks, Depends(get_links)]

unsubscribe = APIRouter(prefix="/unsubscribe", tags=["unsubscribe"], route_class=StorableRoute)


def _page(title: str, text: str, status_code: int = 200, form: bool = False) -> HTMLResponse:
    button = (f'<form method="post"><input type="hidden" name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">'
              '<button type="submit">Unsubscribe</button></form>') if form else ""
    body = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">'
            '</head><body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">'
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{button}</body></html>")
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def _masked(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 1)}@{domain}"


def _read(links: UnsubscribeLinks, token: str) -> Unsubscribe | None:
    try:
        return links.tokens.read(token)
    except InvalidUnsubscribeToken:
        return None


_UNKNOWN = ("Link not recognised", "This unsubscribe link is not valid. It may have been cut short: "
            "use the whole link from the mail.")


@unsubscribe.get("/{token}", response_class=HTMLResponse, summary="The unsubscribe page: a button, nothing more")
async def confirmation_page(token: str, links: Links, ledger: Ledger) -> HTMLResponse:
    found = _read(links, token)
    if found is None:
        return _page(*_UNKNOWN, status_code=404)
    address = await ledger.address_of(found.campaign_id, found.user_id)
    who = f" for {_masked(address)}" if address else ""
    return _page("Unsubscribe", f"Stop all campaign mail{who}? One click, no login.", form=True)


async def _form_fields(request: Request) -> dict[str, str]:
    """The fields of an application/x-www-form-urlencoded or multipart/form-data body."""
    raw = (await request.body())[:MAX_FORM_BYTES]
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {}
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                fields[name] = payload.decode(errors="replace").strip() if isinstance(payload, bytes) else ""
        return fields
    return {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace")).items()}


@unsubscribe.post("/{token}", response_class=HTMLResponse,
                  summary="One-click unsubscribe (RFC 8058): the body List-Unsubscribe=One-Click",
                  responses={400: {"description": "The body is not List-Unsubscribe=One-Click"},
                             404: {"description": "Not a token of this installation"}})
async def one_click(token: str, request: Request, links: Links, ledger: Ledger,
                    suppressions: Suppressions) -> HTMLResponse:
    found = _read(links, token)
    if found is None:
        return _page(*_UNKNOWN, status_code=404)
    if (await _form_fields(request)).get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
        return _page("Nothing done", f"An unsubscribe request carries {ONE_CLICK_FIELD}={ONE_CLICK_VALUE}.",
                     status_code=400)
    address = await ledger.address_of(found.campaign_id, found.user_id)
    if address is None:  # the recipient was erased, or never had a mail of this campaign: nothing to stop
        return _page("Unsubscribed", "There is no mail address left to unsubscribe.")
    await suppressions.add(address, SuppressionReason.UNSUBSCRIBED, found.campaign_id, found.user_id,
                           "one-click unsubscribe")
    return _page("Unsubscribed", f"{_masked(address)} will get no more campaign mail.")
