import pytest

from recmesh.common.auth import TokenBucket, digest, make_key, parse_keys


def test_keys_are_stored_hashed_and_parsed_with_their_scopes():
    token, line = make_key(["recommend", "track"], "web")
    assert token not in line and line.startswith(digest(token))
    keys = parse_keys(f"# the web tier\n\n{line}\n")
    assert keys[digest(token)].name == "web" and keys[digest(token)].scopes == {"recommend", "track"}


@pytest.mark.parametrize("text, message", [
    ("sha256:abc recommend web", "keys:1: expected"),
    (f"{digest('x')} recommend", "keys:1: expected"),
    (f"# ok\n{digest('x')} recommend,root web", "keys:2: unknown scopes \\['root'\\]"),
])
def test_a_bad_key_line_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_keys(text)


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=2, burst=3, at=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token back after half a second
