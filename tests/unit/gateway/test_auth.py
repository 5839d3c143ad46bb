"""Session cookies carry their issue time; keys files reload on change and survive a bad edit."""

import json

import pytest

from musicrl.errors import Unauthorized
from musicrl.gateway.auth import KeyFile, Scope, Signer, new_api_key


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_and_its_issue_time_cannot_be_moved():
    clock = Clock()
    signer = Signer("s" * 32, session_max_age_s=3600, clock=clock)
    session_id, cookie = signer.new_session()
    assert signer.session_from_cookie(cookie) == session_id
    clock.now += 3601
    with pytest.raises(Unauthorized, match="expired"):
        signer.session_from_cookie(cookie)
    sid, _, signature = cookie.split(".")
    with pytest.raises(Unauthorized, match="signature is invalid"):
        signer.session_from_cookie(f"{sid}.{int(clock.now)}.{signature}")  # a fresh time needs a fresh signature


@pytest.mark.parametrize("cookie", ["someone.else", "no-dots", "a.b.c", "é.1.x"])
def test_a_malformed_or_forged_cookie_says_so(cookie):
    with pytest.raises(Unauthorized, match="malformed|signature is invalid"):
        Signer("s" * 32).session_from_cookie(cookie)
    assert Signer("s" * 32).session_from_cookie(None) is None  # no cookie is not an error: it is no session


def test_a_key_file_reloads_on_change_and_keeps_the_last_good_keys(tmp_path):
    clock = Clock()
    path = tmp_path / "keys.json"
    old_token, old_key = new_api_key("old", [Scope.RATE])
    path.write_text(json.dumps([old_key.to_wire()]))
    keys = KeyFile(str(path), check_interval_s=1.0, clock=clock)
    new_token, new_key = new_api_key("new", [Scope.FEEDBACK])
    path.write_text(json.dumps([old_key.to_wire(), new_key.to_wire()]))
    with pytest.raises(Unauthorized):
        keys.authenticate(f"Bearer {new_token}")  # checked at most once a second
    clock.now += 1.0
    assert keys.authenticate(f"Bearer {new_token}").key_id == "new"
    path.write_text("[{half-written")
    clock.now += 1.0
    assert keys.authenticate(f"Bearer {old_token}").key_id == "old"  # a broken file locks nobody out


def test_generate_implies_compare_but_page_scopes_do_not_generate():
    from musicrl.errors import Forbidden
    from musicrl.gateway.auth import UI_SCOPES, Caller

    Caller("partner", frozenset({Scope.GENERATE}), 60).require(Scope.COMPARE)
    page = Caller("ui", UI_SCOPES, 60, session_id="s")
    page.require(Scope.COMPARE)
    with pytest.raises(Forbidden, match="'generate' scope"):
        page.require(Scope.GENERATE)
