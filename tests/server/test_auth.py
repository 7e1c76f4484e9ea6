"""Invite tokens: signing, verification, expiry to the second, the secret file, the CLI."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from crdt_sync.sync import Role
from server.auth import (
    Grant,
    InvalidTokenError,
    SecretFileError,
    TokenAuthority,
    default_secret_path,
    invite_link,
    load_or_create_secret,
    parse_duration,
)
from server.cli import main

SECRET = bytes(range(32))
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def authority(clock: Clock | None = None, secret: bytes = SECRET) -> TokenAuthority:
    return TokenAuthority(secret, clock=clock or Clock())


def test_a_token_grants_its_document_and_role_until_its_expiry() -> None:
    issuer = authority()
    token = issuer.issue("notes", Role.READ, 60)
    assert issuer.verify(token, "notes") == Grant("notes", Role.READ, int(NOW) + 60)
    assert issuer.verify(issuer.issue("notes"), "notes").role is Role.WRITE


def test_expiry_is_exact_to_the_second_with_no_grace() -> None:
    clock = Clock(NOW + 0.75)  # issued mid-second: exp counts from the whole second
    issuer = authority(clock)
    token = issuer.issue("notes", Role.WRITE, 90)
    clock.now = NOW + 89.999
    issuer.verify(token, "notes")
    clock.now = NOW + 90
    with pytest.raises(InvalidTokenError, match="expired at"):
        issuer.verify(token, "notes")


def test_a_token_for_another_document_is_refused() -> None:
    issuer = authority()
    token = issuer.issue("notes")
    with pytest.raises(InvalidTokenError, match="opens 'notes', not document 'notes2'"):
        issuer.verify(token, "notes2")


def test_a_prefix_token_opens_every_document_with_that_prefix() -> None:
    issuer = authority()
    token = issuer.issue("team-*", Role.READ)
    assert issuer.verify(token, "team-a").document == "team-*"
    assert issuer.verify(token, "team-").role is Role.READ
    with pytest.raises(InvalidTokenError, match="not document 'teams'"):
        issuer.verify(token, "teams")
    everything = issuer.issue("*")
    assert issuer.verify(everything, "anything.at_all").covers("x")


@pytest.mark.parametrize("pattern", ["", ".hidden", "a\tb", "team/*", "**"])
def test_invalid_document_patterns_are_not_signed(pattern: str) -> None:
    with pytest.raises(ValueError):
        authority().issue(pattern)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = authority(secret=b"x" * 32).issue("notes")
    with pytest.raises(InvalidTokenError, match="not signed by this server"):
        authority().verify(token, "notes")


def _tamper(token: str, **claims: object) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(claims)
    raw = json.dumps(decoded).encode()
    return ".".join([header, base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), signature])


def test_a_tampered_token_is_refused() -> None:
    issuer = authority()
    token = issuer.issue("notes", Role.READ)
    for forged in (
        _tamper(token, role="write"),
        _tamper(token, doc="*"),
        _tamper(token, exp=int(NOW) + 10**6),
    ):
        with pytest.raises(InvalidTokenError, match="not signed by this server"):
            issuer.verify(forged, "notes")


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "a.b.c", "x" * 5000, "\u00e9.\u00e9.\u00e9"],
)
def test_missing_or_malformed_tokens_are_refused_with_a_reason(token: str | None) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        authority().verify(token, "notes")
    assert str(caught.value)


def test_unsigned_and_foreign_algorithm_tokens_are_refused() -> None:
    claims = {"doc": "notes", "role": "write", "exp": int(NOW) + 60}
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    with pytest.raises(InvalidTokenError, match="malformed"):
        authority().verify(unsigned, "notes")
    other = jwt.encode(claims, SECRET + b"padding-for-hs512-keys-0123456789", algorithm="HS512")
    with pytest.raises(InvalidTokenError, match="malformed"):
        authority().verify(other, "notes")


def test_tokens_lacking_a_claim_or_with_a_bad_role_are_malformed() -> None:
    for claims in (
        {"doc": "notes", "role": "write"},
        {"doc": "notes", "exp": int(NOW) + 60},
        {"doc": "notes", "role": "admin", "exp": int(NOW) + 60},
        {"doc": 7, "role": "write", "exp": int(NOW) + 60},
        {"doc": "notes", "role": "write", "exp": "soon"},
    ):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        with pytest.raises(InvalidTokenError, match="malformed"):
            authority().verify(token, "notes")


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("12h") == 43200
    assert parse_duration("7d") == 604800
    for bad in ("7", "d", "0s", "-1d", "1.5h", "7w", "99999d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_secret_file_is_created_private_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "server.secret"
    secret, created = load_or_create_secret(path)
    assert created and len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_secret(path)
    assert again == secret and not created_again


def test_a_shared_or_broken_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    load_or_create_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_or_create_secret(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(SecretFileError, match="does not hold 32"):
        load_or_create_secret(path)


def test_a_new_secret_revokes_every_token(tmp_path: Path) -> None:
    path = tmp_path / "server.secret"
    first, _ = TokenAuthority.from_file(path)
    token = first.issue("notes")
    path.unlink()
    second, created = TokenAuthority.from_file(path)
    assert created
    with pytest.raises(InvalidTokenError, match="secret changed"):
        second.verify(token, "notes")


def test_invite_links_carry_the_token_and_pin_in_the_fragment() -> None:
    pin = "sha256:" + "ab" * 32
    assert invite_link("ws://h:1", "notes", "T.K.N") == "ws://h:1/notes#token=T.K.N"
    assert invite_link("wss://h:1/", "notes", "t", pin) == f"wss://h:1/notes#token=t&pin={pin}"
    assert invite_link("ws://h:1/other", "team-*", "t") == "ws://h:1/other#token=t"
    with pytest.raises(ValueError):
        invite_link("ws://h:1", "team-*", "t")
    with pytest.raises(ValueError):
        invite_link("http://h:1", "notes", "t")


def test_token_command_prints_a_token_as_its_last_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "documents.sqlite3"
    assert main(["token", "notes", "--role", "read", "--expires", "90s", "--db", str(db)]) == 0
    out, err = capsys.readouterr()
    token = out.strip().splitlines()[-1]
    assert "read access to 'notes'" in err
    issuer, created = TokenAuthority.from_file(default_secret_path(db))
    assert not created
    assert issuer.verify(token, "notes").role is Role.READ


def test_token_command_with_a_url_prints_an_invite_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "s.secret"
    argv = ["token", "notes", "--secret-file", str(secret), "--url", "ws://10.0.0.5:8080"]
    assert main(argv) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert link.startswith("ws://10.0.0.5:8080/notes#token=")
    issuer, _ = TokenAuthority.from_file(secret)
    assert issuer.verify(link.split("#token=", 1)[1], "notes").role is Role.WRITE


def test_token_command_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = str(tmp_path / "s.secret")
    assert main(["token", ".bad", "--secret-file", secret]) == 2
    assert "document id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["token", "notes", "--expires", "7w", "--secret-file", secret])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["token", "notes", "--role", "admin", "--secret-file", secret])
    with pytest.raises(SystemExit):
        main(["token", "notes", "--secret-file", secret, "--db", secret])


def test_token_command_runs_as_a_module(tmp_path: Path) -> None:
    secret = tmp_path / "s.secret"
    result = subprocess.run(
        [sys.executable, "-m", "server", "token", "team-*", "--secret-file", str(secret)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    issuer, _ = TokenAuthority.from_file(secret)
    assert issuer.verify(result.stdout.strip().splitlines()[-1], "team-x").document == "team-*"
    assert "created the server secret" in result.stderr
