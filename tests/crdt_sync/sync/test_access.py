"""Roles, invite links and certificate pins on the client side."""

from __future__ import annotations

import hashlib

import pytest

from crdt_sync.sync import Invite, Role, certificate_fingerprint, split_invite
from crdt_sync.sync.access import parse_pin, pin_matches

PIN = "sha256:" + "AB" * 32


def test_roles_have_wire_values_and_labels() -> None:
    assert (int(Role.WRITE), int(Role.READ)) == (0, 1)
    assert Role.from_label("read") is Role.READ
    assert Role.WRITE.label == "write"
    with pytest.raises(ValueError):
        Role.from_label("admin")


def test_an_invite_link_splits_into_url_token_and_pin() -> None:
    link = f"wss://10.0.0.5:9000/notes#token=aa.bb-cc_dd&pin={PIN}"
    assert split_invite(link) == Invite("wss://10.0.0.5:9000/notes", "aa.bb-cc_dd", PIN.lower())
    assert split_invite("ws://h:1/notes") == Invite("ws://h:1/notes", None, None)
    assert split_invite("ws://h:1/notes#token=t") == Invite("ws://h:1/notes", "t", None)


@pytest.mark.parametrize(
    "fragment",
    ["garbage", "token=a&token=b", "secret=x", "pin=sha256:12", "pin=md5:" + "ab" * 16],
)
def test_a_malformed_fragment_is_refused(fragment: str) -> None:
    with pytest.raises(ValueError):
        split_invite("ws://h:1/notes#" + fragment)


def test_a_pin_names_exactly_one_certificate() -> None:
    der = b"certificate bytes"
    pin = certificate_fingerprint(der)
    assert pin == "sha256:" + hashlib.sha256(der).hexdigest()
    assert pin_matches(pin.upper().replace("SHA256", "sha256"), der)
    assert not pin_matches(pin, der + b"x")
    with pytest.raises(ValueError):
        parse_pin("sha1:" + "ab" * 20)
