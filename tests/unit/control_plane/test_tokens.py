"""Token shapes and the bearer metadata every Flowyard call carries."""

from __future__ import annotations

import pytest

from control_plane.api.authentication import bearer_token
from control_plane.errors import Unauthenticated
from control_plane.orchestration import tokens

RUN_ID = "0123456789abcdef0123456789abcdef"


def test_api_tokens_have_a_public_id_and_are_stored_as_their_hash() -> None:
    token, stored = tokens.mint()
    token_id = tokens.api_token_id(token)
    assert token_id is not None and token.startswith(f"{token_id}.")
    assert tokens.matches(token, stored) and not tokens.matches(token + "x", stored)
    assert token.split(".")[1] not in stored
    assert tokens.engine_attempt(token) is None


def test_engine_tokens_name_their_run_attempt() -> None:
    token, stored = tokens.mint_engine(RUN_ID, 3)
    assert tokens.engine_attempt(token) == (RUN_ID, 3)
    assert tokens.api_token_id(token) is None
    assert tokens.matches(token, stored)
    assert tokens.mint_engine(RUN_ID, 3)[0] != token


@pytest.mark.parametrize(
    "text",
    ["", "nodot", "abc.", ".secret", "run-xyz-1.s", f"run-{RUN_ID}-0.s", f"run-{RUN_ID}-x.s"],
)
def test_malformed_tokens_have_no_id(text: str) -> None:
    assert tokens.engine_attempt(text) is None
    assert tokens.api_token_id(text) is None


def test_a_token_made_outside_the_server_must_look_and_weigh_like_a_minted_one() -> None:
    assert tokens.well_formed(tokens.mint()[0])
    assert tokens.well_formed("0123456789abcdef." + "0f" * 16)  # openssl rand -hex 16
    for weak in (
        "0123456789abcdef." + "a" * 31,  # under 128 bits of hex
        "0123456789ABCDEF." + "a" * 43,  # the id is lowercase hex
        "0123456789abcde." + "a" * 43,
        "0123456789abcdef." + "a" * 42 + "/",  # not URL-safe: breaks in metadata and URLs
        "0123456789abcdef." + "a" * 42 + " ",
        "0123456789abcdef" + "a" * 43,
        tokens.mint_engine(RUN_ID, 1)[0],
        "",
    ):
        assert not tokens.well_formed(weak), weak


def test_bearer_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc.def")]) == "abc.def"
    assert bearer_token([("x", "y"), ("authorization", "bearer  abc.def ")]) == "abc.def"
    for metadata in (
        [],
        None,
        [("authorization", "Basic dXNlcg==")],
        [("authorization", "Bearer ")],
    ):
        with pytest.raises(Unauthenticated, match="FLOWYARD_TOKEN"):
            bearer_token(metadata)
