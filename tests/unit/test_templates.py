"""Campaign templates: what a template can see, and what the sandbox refuses."""

from __future__ import annotations

import pytest

from server.communication_api.dispatch import delivery_for
from server.communication_api.templates import MessageTemplate, RenderError, validate
from server.stores.deliveries import DeliveryStatus

pytestmark = pytest.mark.unit

PROFILE = {"userId": "u1", "traits": {"firstName": "Ann", "email": "ann@example.com", "plan": {"tier": "gold"}},
           "totalSpent": 1500.0, "eventCounts": {"purchase": 2}, "history": {"purchase": [[1.0, 2.0]]}}


@pytest.mark.parametrize(("body", "expected"), [
    ("{{ firstName }} / {{ traits.firstName }}", "Ann / Ann"),
    ("{{ plan.tier }} {{ totalSpent }} {{ eventCounts.purchase }}", "gold 1500.0 2"),
    ("{{ nickname | default('there') }}|{{ traits.missing.deeper }}|", "there||"),
    ("{{ history }}", ""),  # internal state is not part of the context
    ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
    ("{{ '%05.1f' % totalSpent }}", "1500.0"),
])
def test_profile_fields_render(body: str, expected: str) -> None:
    assert MessageTemplate("s", body).render(PROFILE)[1] == expected


def test_subject_is_one_line() -> None:
    assert MessageTemplate("Hi\n {{ firstName }}\n", "b").render(PROFILE)[0] == "Hi Ann"


@pytest.mark.parametrize(("body", "message"), [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{{ traits.update({'x': 1}) }}", "unsafe"),
    ("{% for i in range(100000) %}{% endfor %}", "range() is limited"),
    ("{% for i in range(9999) %}{% for j in range(9999) %}{% endfor %}{% endfor %}", "longer than"),
    ("{{ 'x' * 10000000000 }}", "exceed"),
    ("{{ 10 ** 10000000 }}", "exponents"),
    ("{{ '%999999999d' % 1 }}", "format widths"),
    ("{{ 'x' | center(10000000000) }}", "widths"),
    ("{{ lipsum(1000000) }}", "undefined"),
    ("{% for x in %}", "line 1"),
    ("{{ 1 / 0 }}", "division by zero"),
])
def test_the_sandbox_refuses(body: str, message: str) -> None:
    with pytest.raises(RenderError, match=r"^template\.body: ") as raised:
        validate("s", body)
    assert message in str(raised.value)


def test_recipients_are_skipped_for_opt_out_or_no_address() -> None:
    template = MessageTemplate("Hi {{ firstName }}", "b")
    entry, message = delivery_for(template, "u1", PROFILE)
    assert entry.status is DeliveryStatus.QUEUED and message == ("Hi Ann", "b")
    for traits, reason in [({"email": "a@b.c", "emailOptOut": True}, "opted out"),
                           ({"email": "a@b.c", "emailOptOut": "yes"}, "opted out"),
                           ({"email": "not-an-address"}, "no email address"), ({}, "no email address")]:
        entry, message = delivery_for(template, "u1", {"userId": "u1", "traits": traits})
        assert entry.status is DeliveryStatus.SKIPPED and message is None and reason in str(entry.reason)
    entry, message = delivery_for(template, "u1", None)
    assert entry.status is DeliveryStatus.SKIPPED and message is None
    failing = MessageTemplate("s", "{{ 1 / traits.zero }}")
    entry, message = delivery_for(failing, "u1", {"userId": "u1", "traits": {"email": "a@b.c", "zero": 0}})
    assert entry.status is DeliveryStatus.FAILED and "division" in str(entry.reason)
