"""Bounces (relaybal.delivery.bounce): structure, fields, safety of what is put in, header extraction."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Sequence
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybal.delivery.bounce import (
    FailedRecipient,
    build_bounce,
    derive_status,
    needs_bounce,
    original_headers,
)

#: The property test runs a fixed, reproducible set of this many examples.
PROPERTY_EXAMPLES = 400

ARRIVAL = 1_700_000_000.0
NOW = 1_700_003_600.5
HEADERS = (
    b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n"
    b"\tby relay.example.net with ESMTP id 5F6A1B2C3D4E5\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com, carol@example.com\r\n"
    b"Subject: Quarterly report\r\n"
    b"Message-ID: <m1@example.org>\r\n"
)
BOB = FailedRecipient(
    address="bob@example.com",
    status="5.1.1",
    diagnostic="550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
    remote_mta="mx.example.com",
)
CAROL = FailedRecipient(
    address="carol@example.com",
    status="4.4.1",
    diagnostic="connect to mx.example.com: Connection timed out",
    remote_mta=None,
    action="delayed",
)


def bounce(recipients: Sequence[FailedRecipient] = (BOB,), **overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "queue_id": "5F6A1B2C3D4E5",
        "sender": "alice@example.org",
        "recipients": recipients,
        "reporting_mta": "relay.example.net",
        "arrival_date": ARRIVAL,
        "now": NOW,
        "original_headers": HEADERS,
    }
    arguments.update(overrides)
    return build_bounce(**arguments)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts(raw: bytes) -> list[EmailMessage]:
    message = parse(raw)
    assert message.get_content_type() == "multipart/report"
    found = list(message.iter_parts())
    assert all(isinstance(part, EmailMessage) for part in found)
    return found  # type: ignore[return-value]


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Each body part as (header section, content), cut at the boundary by hand."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = raw.split(delimiter)
    assert pieces[-1] == b"--\r\n", "the message ends with the close delimiter"
    result = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        head, _, body = piece[2:].partition(b"\r\n\r\n")
        result.append((head, body))
    return result


def status_blocks(raw: bytes) -> list[dict[str, str]]:
    """The delivery-status fields, unfolded, one dict per block (per message, then per recipient)."""
    head, body = raw_parts(raw)[1]
    assert b"quoted-printable" not in head.lower() and b"base64" not in head.lower()
    blocks = []
    for block in body.decode("utf-8").split("\r\n\r\n"):
        if not block.strip():
            continue
        unfolded = re.sub(r"\r\n(?=[ \t])", "", block.strip("\r\n"))
        fields: dict[str, str] = {}
        for line in unfolded.split("\r\n"):
            name, _, value = line.partition(":")
            assert name not in fields, f"{name} twice in a block"
            fields[name] = value.strip()
        blocks.append(fields)
    return blocks


def assert_lines_ok(raw: bytes) -> None:
    """CRLF line ends only, no line over 998 octets, the message ends with CRLF."""
    assert raw.endswith(b"\r\n")
    for line in raw[:-2].split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, line
        assert len(line) <= 998, len(line)


def text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    charset = part.get_content_charset() or "us-ascii"
    return payload.decode(charset)


# -- needs_bounce -----------------------------------------------------------------


def test_null_sender_gets_no_bounce() -> None:
    assert needs_bounce("") is False


@pytest.mark.parametrize(
    "sender", ["alice@example.org", "MAILER-DAEMON@example.org", "postmaster", "<>", " "]
)
def test_every_other_sender_gets_one(sender: str) -> None:
    assert needs_bounce(sender) is True


# -- structure ---------------------------------------------------------------------


def test_top_level_header_fields() -> None:
    raw = bounce()
    message = parse(raw)
    assert b"\r\nFrom: MAILER-DAEMON@relay.example.net (Mail Delivery System)\r\n" in raw
    assert [a.addr_spec for a in message["From"].addresses] == ["MAILER-DAEMON@relay.example.net"]
    assert [a.addr_spec for a in message["To"].addresses] == ["alice@example.org"]
    assert b"\r\nTo: <alice@example.org>\r\n" in raw
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"] == "<5F6A1B2C3D4E5.20231114231320.500000@relay.example.net>"
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == int(NOW)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert raw.isascii()
    assert not message.defects


def test_three_parts_of_the_right_types() -> None:
    found = parts(bounce())
    assert [p.get_content_type() for p in found] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert found[0].get_content_charset() == "us-ascii"
    assert found[2]["Content-Description"] == "Undelivered Message Headers"
    assert all(not p.defects for p in found)


def test_returned_headers_are_the_original_ones() -> None:
    head, body = raw_parts(bounce())[2]
    assert body == HEADERS
    assert b"Content-Transfer-Encoding" not in head


def test_per_message_fields() -> None:
    blocks = status_blocks(bounce(original_envelope_id="QQ314159"))
    assert blocks[0] == {
        "Reporting-MTA": "dns; relay.example.net",
        "X-Relaybal-Queue-ID": "5F6A1B2C3D4E5",
        "Original-Envelope-Id": "QQ314159",
        "Arrival-Date": "Tue, 14 Nov 2023 22:13:20 +0000",
    }


def test_no_original_envelope_id_when_none_was_given() -> None:
    assert "Original-Envelope-Id" not in status_blocks(bounce())[0]


def test_per_recipient_fields() -> None:
    blocks = status_blocks(bounce([BOB, CAROL]))
    assert len(blocks) == 3
    assert blocks[1] == {
        "Final-Recipient": "rfc822; bob@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.com",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 23:13:20 +0000",
    }
    # Not an SMTP reply: the diagnostic type says so (as Postfix's X-Postfix).
    assert blocks[2] == {
        "Final-Recipient": "rfc822; carol@example.com",
        "Action": "delayed",
        "Status": "4.4.1",
        "Diagnostic-Code": "X-Relaybal; connect to mx.example.com: Connection timed out",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 23:13:20 +0000",
    }


def test_email_package_reads_the_delivery_status() -> None:
    report = parts(bounce([BOB, CAROL]))[1]
    payload = report.get_payload()
    assert isinstance(payload, list)
    blocks = [block for block in payload if isinstance(block, Message)]
    assert len(blocks) == 3
    assert [block["Final-Recipient"] for block in blocks[1:]] == [
        "rfc822; bob@example.com",
        "rfc822; carol@example.com",
    ]
    assert blocks[0]["Reporting-MTA"] == "dns; relay.example.net"


def test_recipient_without_diagnostic_or_gateway() -> None:
    quiet = FailedRecipient("dave@example.com", "5.4.7", None, None)
    raw = bounce([quiet])
    block = status_blocks(raw)[1]
    assert "Diagnostic-Code" not in block and "Remote-MTA" not in block
    assert block["Status"] == "5.4.7"
    assert "<dave@example.com>: delivery failed (status 5.4.7)" in text_of(parts(raw)[0])


def test_human_part_names_each_recipient_and_its_diagnostic() -> None:
    text = text_of(parts(bounce([BOB, CAROL]))[0])
    assert text.startswith("This is the mail system at host relay.example.net.")
    assert "I'm sorry to have to inform you" in text
    flat = " ".join(text.split())
    assert "<bob@example.com>: host mx.example.com said: 550 5.1.1 <bob@example.com>: Recipient" in flat
    assert "<carol@example.com>: connect to mx.example.com: Connection timed out" in flat
    assert "delayed" in flat


def test_every_delayed_gives_a_warning() -> None:
    raw = bounce([CAROL])
    assert parse(raw)["Subject"] == "Delayed Mail (still being retried)"
    found = parts(raw)
    text = text_of(found[0])
    assert "I'm sorry" not in text and "do not need to send your message again" in text
    assert found[2]["Content-Description"] == "Message Headers"
    assert status_blocks(raw)[1]["Action"] == "delayed"


def test_some_failed_gives_a_bounce() -> None:
    assert parse(bounce([CAROL, BOB]))["Subject"] == "Undelivered Mail Returned to Sender"


def test_no_recipients_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        bounce([])


def test_action_is_failed_or_delayed() -> None:
    with pytest.raises(ValueError):
        FailedRecipient("bob@example.com", "5.0.0", None, None, action="delivered")


# -- status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diagnostic", "action", "expected"),
    [
        ("550 5.7.1 Relaying denied", "failed", "5.7.1"),
        ("550-5.7.1 Relaying denied", "failed", "5.7.1"),
        ("452 4.2.2 Mailbox full", "delayed", "4.2.2"),
        ("554 Transaction failed", "failed", "5.0.0"),
        ("421 Service not available", "delayed", "4.0.0"),
        ("451 4.x.1 odd", "failed", "4.0.0"),
        ("lost connection with mx.example.com", "failed", "5.0.0"),
        ("lost connection with mx.example.com", "delayed", "4.0.0"),
        (None, "failed", "5.0.0"),
        (None, "delayed", "4.0.0"),
        ("", "failed", "5.0.0"),
    ],
)
def test_derive_status(diagnostic: str | None, action: str, expected: str) -> None:
    assert derive_status(diagnostic, action) == expected


@pytest.mark.parametrize("given_status", ["", "unknown", "5.1", "6.1.1", "5.1.1.1", " "])
def test_unknown_status_is_derived(given_status: str) -> None:
    recipients = [
        FailedRecipient("a@example.com", given_status, "550 5.2.1 Mailbox disabled", None),
        FailedRecipient("b@example.com", given_status, None, None),
        FailedRecipient("c@example.com", given_status, None, None, action="delayed"),
    ]
    assert [block["Status"] for block in status_blocks(bounce(recipients))[1:]] == ["5.2.1", "5.0.0", "4.0.0"]


# -- safety -------------------------------------------------------------------------

INJECTION = "\r\nBcc: victim@example.com\r\n\r\n--frontier\nX-Injected: yes\rX-Also: yes"


def test_header_injection_is_neutralised() -> None:
    evil = FailedRecipient(
        address="bob@example.com" + INJECTION,
        status="5.1.1" + INJECTION,
        diagnostic="550 5.1.1 gone" + INJECTION,
        remote_mta="mx.example.com" + INJECTION,
    )
    raw = bounce(
        [evil],
        sender="alice@example.org" + INJECTION,
        queue_id="5F6A" + INJECTION,
        reporting_mta="relay.example.net" + INJECTION,
        original_envelope_id="env" + INJECTION,
    )
    assert_lines_ok(raw)
    message = parse(raw)
    boundary = message.get_boundary()
    assert boundary is not None and "frontier" not in boundary
    # Only the real delimiters start with the boundary; nothing injected starts a field.
    assert sum(line.startswith(b"--" + boundary.encode()) for line in raw.split(b"\r\n")) == 4
    top = raw.split(b"\r\n\r\n", 1)[0]
    for head in [top, *(head for head, _ in raw_parts(raw))]:
        for line in head.split(b"\r\n"):
            assert not line.startswith((b"Bcc:", b"X-Injected:", b"X-Also:", b"--frontier")), line
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert len(parts(raw)) == 3
    blocks = status_blocks(raw)
    assert len(blocks) == 2
    for block in blocks:
        assert set(block) <= {
            "Reporting-MTA",
            "X-Relaybal-Queue-ID",
            "Original-Envelope-Id",
            "Arrival-Date",
            "Final-Recipient",
            "Action",
            "Status",
            "Remote-MTA",
            "Diagnostic-Code",
            "Last-Attempt-Date",
        }
    # The values are kept, on one line each.
    assert blocks[1]["Diagnostic-Code"].startswith("smtp; 550 5.1.1 gone Bcc: victim@example.com --frontier")
    assert blocks[1]["Status"] == "5.1.1"
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", top).split(b"\r\n")
    assert b"To: <alice@example.org Bcc: victim@example.com --frontier X-Injected: yes X-Also: yes>" in (
        unfolded
    )


def test_long_values_are_folded_and_no_line_is_too_long() -> None:
    diagnostic = "550 5.1.1 " + " ".join(["word"] * 400) + " " + "x" * 3000
    long = FailedRecipient("l" * 1500 + "@example.com", "5.1.1", diagnostic, "m" * 1200)
    headers = b"Subject: " + b"y" * 2500 + b"\r\nX-Other: z\r\n"
    raw = bounce([long], original_headers=headers, sender="s" * 1100 + "@example.org")
    assert_lines_ok(raw)
    block = status_blocks(raw)[1]
    # Folded at spaces where the words allow, a space put in the cuts of a word too long for a line.
    assert block["Diagnostic-Code"].replace(" ", "") == ("smtp;" + diagnostic).replace(" ", "")
    assert block["Final-Recipient"].replace(" ", "") == "rfc822;" + "l" * 1500 + "@example.com"
    # The returned header line is split into continuation lines: unfolding gives it back, spaces added.
    returned = parts(raw)[2].get_payload(decode=True)
    assert isinstance(returned, bytes)
    subject, other = re.sub(rb"\r\n(?=[ \t])", b"", returned).split(b"\r\n")[:2]
    assert subject.replace(b" ", b"") == b"Subject:" + b"y" * 2500
    assert other == b"X-Other: z"
    folded = [line for line in raw.split(b"\r\n") if line.startswith(b"Diagnostic-Code:")]
    assert len(folded[0]) <= 78


def test_boundary_avoids_the_content_even_when_it_holds_the_boundary() -> None:
    boundary = parse(bounce()).get_boundary()
    assert boundary is not None and len(boundary) <= 70
    prefix = boundary.rsplit("=", 1)[0]
    trap = (
        f"X-Trap: --{boundary}\r\nX-Trap-Upper: --{boundary.upper()}\r\n X-Prefix: {prefix}\r\n"
        f"X-Close: --{boundary}--\r\n"
    ).encode()
    diagnostic = f"550 5.1.1 --{boundary}"
    raw = bounce(
        [FailedRecipient("bob@example.com", "5.1.1", diagnostic, None)],
        original_headers=HEADERS + trap,
    )
    second = parse(raw).get_boundary()
    assert second is not None and second != boundary
    assert second.startswith(prefix)
    for head, body in raw_parts(raw):
        assert second.lower().encode() not in (head + body).lower()
    found = parts(raw)
    assert len(found) == 3
    returned = found[2].get_payload(decode=True)
    assert returned == HEADERS + trap
    assert status_blocks(raw)[1]["Diagnostic-Code"] == f"smtp; {diagnostic}"


def test_boundary_is_stable_for_the_same_input() -> None:
    assert bounce() == bounce()


def test_binary_headers_without_smtputf8_are_quoted_printable() -> None:
    headers = b"Subject: Gr\xc3\xbc\xc3\x9fe\r\nX-Bin: \xff\x00 end \r\n"
    raw = bounce(original_headers=headers)
    assert raw.isascii()
    assert parse(raw)["Content-Transfer-Encoding"] == "7bit"
    part = parts(raw)[2]
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_payload(decode=True) == headers
    assert_lines_ok(raw)


# -- internationalisation (RFC 6533) ----------------------------------------------------


def test_non_ascii_recipient_with_smtputf8() -> None:
    jose = FailedRecipient(
        "josé@exämple.com", "5.1.1", "550 5.1.1 <josé@exämple.com>: unknown", "mx.exämple.com"
    )
    headers = "From: Jürgen <jürgen@example.org>\r\nSubject: Grüße\r\n".encode()
    raw = bounce([jose], sender="jürgen@example.org", original_headers=headers, smtputf8=True)
    assert_lines_ok(raw)
    message = parse(raw)
    assert message.get_param("report-type") == "global-delivery-status"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert "<jürgen@example.org>" in raw.decode("utf-8")
    found = parts(raw)
    assert [p.get_content_type() for p in found] == [
        "text/plain",
        "message/global-delivery-status",
        "message/global-headers",
    ]
    assert found[0].get_content_charset() == "utf-8"
    assert "<josé@exämple.com>: host mx.exämple.com said: 550 5.1.1" in text_of(found[0])
    block = status_blocks(raw)[1]
    assert block["Final-Recipient"] == "utf-8; josé@exämple.com"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <josé@exämple.com>: unknown"
    head, body = raw_parts(raw)[2]
    assert b"Content-Transfer-Encoding: 8bit" in head
    assert body == headers


def test_long_utf8_header_line_is_split_between_characters() -> None:
    headers = ("Subject: " + "é" * 1500 + "\r\n").encode()
    raw = bounce(original_headers=headers, smtputf8=True)
    assert_lines_ok(raw)
    head, body = raw_parts(raw)[2]
    # Still valid UTF-8, so still sent as it is.
    assert b"Content-Transfer-Encoding: 8bit" in head
    lines = body.decode("utf-8").split("\r\n")[:-1]
    assert len(lines) == 4 and all(line.startswith(" ") for line in lines[1:])
    assert lines[0] + "".join(line[1:] for line in lines[1:]) == "Subject: " + "é" * 1500


def test_ascii_recipient_with_smtputf8_is_rfc822() -> None:
    raw = bounce(smtputf8=True)
    assert status_blocks(raw)[1]["Final-Recipient"] == "rfc822; bob@example.com"
    assert [p.get_content_type() for p in parts(raw)][1:] == [
        "message/global-delivery-status",
        "message/global-headers",
    ]
    assert raw.isascii()


def test_non_ascii_recipient_without_smtputf8_is_7bit_xtext() -> None:
    jose = FailedRecipient("josé+tag=1@exämple.com", "5.1.1", "550 5.1.1 Ünknown", None)
    raw = bounce([jose])
    assert raw.isascii()
    assert_lines_ok(raw)
    block = status_blocks(raw)[1]
    assert block["Final-Recipient"] == r"utf-8; jos\x{E9}\x{2B}tag\x{3D}1@ex\x{E4}mple.com"
    assert block["Diagnostic-Code"] == r"smtp; 550 5.1.1 \x{DC}nknown"
    text = parts(raw)[0]
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert "<josé+tag=1@exämple.com>: 550 5.1.1 Ünknown" in text_of(text)


def test_surrogates_from_undecodable_replies_do_not_break_it() -> None:
    broken = FailedRecipient("bob@example.com", "5.0.0", "550 bad \udcff byte", None)
    raw = bounce([broken], smtputf8=True)
    raw.decode("utf-8")
    assert status_blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 bad \ufffd byte"


# -- original_headers ------------------------------------------------------------------------

BODY = HEADERS + b"\r\nDear Bob,\r\nX-Not-A-Header: body\r\n"


def test_original_headers_stop_before_the_blank_line() -> None:
    assert original_headers(BODY) == HEADERS


def test_original_headers_truncate_at_a_line_boundary() -> None:
    lines = HEADERS.split(b"\r\n")[:-1]
    three = sum(len(line) + 2 for line in lines[:3])
    assert original_headers(BODY, limit=three) == b"".join(line + b"\r\n" for line in lines[:3])
    assert original_headers(BODY, limit=three + 5) == b"".join(line + b"\r\n" for line in lines[:3])
    assert original_headers(BODY, limit=three - 1) == b"".join(line + b"\r\n" for line in lines[:2])
    assert original_headers(BODY, limit=5) == b""
    assert original_headers(BODY, limit=len(HEADERS)) == HEADERS


def test_original_headers_default_limit_is_64_kib() -> None:
    many = b"".join(b"X-Filler-%05d: %s\r\n" % (n, b"f" * 80) for n in range(2000))
    result = original_headers(many + b"\r\nbody\r\n")
    assert len(result) <= 65536 < len(many)
    assert result.endswith(b"\r\n") and many.startswith(result)
    assert len(result) > 65536 - 100


def test_original_headers_leave_out_a_cut_off_last_line() -> None:
    assert original_headers(b"From: a@example.org\r\nSubject: cut of") == b"From: a@example.org\r\n"


def test_original_headers_stop_at_a_line_that_is_no_header() -> None:
    body = b"From: a@example.org\r\nthis is body text\r\nSubject: later\r\n\r\n"
    assert original_headers(body) == b"From: a@example.org\r\n"
    assert original_headers(b"\r\nSubject: not a header\r\n") == b""
    assert original_headers(b" continued\r\nSubject: x\r\n") == b""


def test_original_headers_keep_folded_fields_and_make_line_ends_crlf() -> None:
    body = b"Subject: a\n  folded\rTo: b@example.org\r\n\nbody"
    assert original_headers(body) == b"Subject: a\r\n  folded\r\nTo: b@example.org\r\n"


# -- property --------------------------------------------------------------------------------

# Text as it might come from a gateway or a client: any characters, ASCII-heavy, line ends and
# MIME-looking pieces likely, surrogates (from undecodable bytes) included.
_pieces = st.sampled_from(["\r\n", "\n", "\r", "--", "=", " ", "\t", "Bcc: x", "550 ", "5.1.1", "\x00", ": "])
_texts = st.lists(
    st.one_of(_pieces, st.text(max_size=40), st.text(alphabet=st.characters(max_codepoint=127), max_size=60)),
    max_size=12,
).map("".join)
_long_texts = st.one_of(_texts, st.builds(lambda c, n: c * n, st.sampled_from("x é"), st.integers(0, 2500)))
_header_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.sampled_from([b"\r\n", b"\n", b"\r", b"Subject: ", b" folded", b"--", b"\xff", b"\xc3\xa9"]),
            st.binary(max_size=30),
            st.builds(lambda n: b"X-Long: " + b"h" * n, st.integers(900, 2100)),
        ),
        max_size=15,
    ).map(b"".join),
)
_recipients = st.lists(
    st.builds(
        FailedRecipient,
        address=_long_texts,
        status=st.one_of(st.sampled_from(["5.1.1", "4.4.1", "", "bogus"]), _texts),
        diagnostic=st.one_of(st.none(), _long_texts),
        remote_mta=st.one_of(st.none(), _texts),
        action=st.sampled_from(["failed", "delayed"]),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=PROPERTY_EXAMPLES, derandomize=True, deadline=None)
@given(
    recipients=_recipients,
    sender=_texts,
    headers=_header_bytes,
    envelope_id=st.one_of(st.none(), _texts),
    smtputf8=st.booleans(),
)
def test_any_input_gives_a_well_formed_report(
    recipients: list[FailedRecipient], sender: str, headers: bytes, envelope_id: str | None, smtputf8: bool
) -> None:
    raw = bounce(
        recipients,
        sender=sender,
        original_headers=headers,
        original_envelope_id=envelope_id,
        smtputf8=smtputf8,
    )
    assert_lines_ok(raw)
    if not smtputf8 and sender.isascii():
        assert raw.isascii()
    message = parse(raw)
    assert message.get_content_type() == "multipart/report"
    found = list(message.iter_parts())
    assert len(found) == 3
    assert len(raw_parts(raw)) == 3
    blocks = status_blocks(raw)
    assert len(blocks) == 1 + len(recipients)
    assert [block["Action"] for block in blocks[1:]] == [r.action for r in recipients]
    for block in blocks[1:]:
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", block["Status"])
    boundary = message.get_boundary()
    assert boundary is not None
    for head, body in raw_parts(raw):
        assert boundary.lower().encode() not in (head + body).lower()
    for name in ("From", "To", "Subject", "Message-ID", "Date", "Auto-Submitted"):
        assert len(message.get_all(name) or []) == 1, name
