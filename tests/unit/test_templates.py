"""Campaign templates: what a template can see, and what the sandbox refuses."""

from __future__ import annotations

import pytest

from server.communication_api.dispatch import delivery_for
from server.communication_api.templates import MessageTemplate, RenderedMail, RenderError, validate
from server.stores.deliveries import DeliveryStatus
from server.stores.suppressions import SuppressionReason

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
    assert MessageTemplate("s", body).render(PROFILE).body == expected


def test_subject_is_one_line() -> None:
    assert MessageTemplate("Hi\n {{ firstName }}\n", "b").render(PROFILE).subject == "Hi Ann"


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


def test_recipients_are_skipped_when_suppressed_opted_out_or_without_an_address() -> None:
    template = MessageTemplate("Hi {{ firstName }}", "b", "<p>{{ firstName }}</p>")
    queued = delivery_for(template, "u1", PROFILE)
    assert queued.entry.status is DeliveryStatus.QUEUED and queued.suppress is None
    assert queued.mail == RenderedMail("Hi Ann", "b", "<p>Ann</p>")
    for traits, reason, suppress in [
            ({"email": "a@b.c", "emailOptOut": True}, "opted out", SuppressionReason.OPTED_OUT),
            ({"email": "a@b.c", "emailOptOut": "yes"}, "opted out", SuppressionReason.OPTED_OUT),
            ({"emailOptOut": True}, "opted out", None),  # nothing to put on the list without an address
            ({"email": "not-an-address"}, "no email address", None), ({}, "no email address", None)]:
        decision = delivery_for(template, "u1", {"userId": "u1", "traits": traits})
        assert decision.entry.status is DeliveryStatus.SKIPPED and decision.mail is None
        assert reason in str(decision.entry.reason) and decision.suppress is suppress
    assert delivery_for(template, "u1", None).entry.status is DeliveryStatus.SKIPPED
    # the page's suppressed addresses are matched as normalized: case and spaces do not get past the list
    shouting = {"userId": "u1", "traits": {"email": " ANN@Example.com "}}
    listed = delivery_for(template, "u1", shouting, {"ann@example.com": SuppressionReason.UNSUBSCRIBED})
    assert listed.entry.status is DeliveryStatus.SKIPPED and listed.entry.reason == "unsubscribed"
    failing = MessageTemplate("s", "{{ 1 / traits.zero }}")
    failed = delivery_for(failing, "u1", {"userId": "u1", "traits": {"email": "a@b.c", "zero": 0}})
    assert failed.entry.status is DeliveryStatus.FAILED and "division" in str(failed.entry.reason)


def test_the_html_part_is_autoescaped_and_the_text_part_is_not() -> None:
    profile = {"userId": "u1", "traits": {"firstName": "<b>Ann</b> & co"}}
    html = "<p>{{ firstName }}</p><a href='{{ unsubscribe_url }}'>x</a>"
    mail = MessageTemplate("{{ firstName }}", "{{ firstName }}", html).render(
        profile, {"unsubscribe_url": "https://e.example/u/t?a=1&b=2"})
    assert mail.subject == "<b>Ann</b> & co" and mail.body == "<b>Ann</b> & co"
    assert mail.body_html == ("<p>&lt;b&gt;Ann&lt;/b&gt; &amp; co</p>"
                              "<a href='https://e.example/u/t?a=1&amp;b=2'>x</a>")
    with pytest.raises(RenderError, match=r"^template\.bodyHtml: "):
        validate("s", "b", "{% if %}")
