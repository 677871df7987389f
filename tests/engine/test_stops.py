"""vLLM's stop-string rules, as the dispatcher applies them across slices (a table), and the
detokenizer that resumes mid-character exactly where an unsliced request would be."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmfleet.engine.detokenize import TextStream, load_tokenizer
from llmfleet.engine.process import default_model_dir
from llmfleet.engine.stops import StopChecker, check_stop_strings


@pytest.mark.parametrize("text, new, stop, include, expected", [
    ("hello world", 5, ["wor"], False, ("wor", 6)),                 # cut before the string
    ("hello world", 5, ["wor"], True, ("wor", 9)),                  # or after it
    ("hello world", 1, ["ld"], True, ("ld", -1)),                   # kept and at the very end: no cut
    ("hello world", 1, ["lo w"], False, None),                      # only where new characters can be
    ("hello world", 3, ["lo w", "or"], False, ("or", 7)),           # earliest completion wins
    ("abcabc", 3, ["bc", "ca"], False, ("ca", 2)),                  # ... not the earliest start
    ("xaby", 2, ["ab", "xab"], False, ("ab", 1)),                   # ties: first in the list
    ("xaby", 2, ["xab", "ab"], False, ("xab", 0)),
    ("anything", 0, ["any"], False, None),                          # nothing new, nothing checked
])  # fmt: skip
def test_check_stop_strings_is_vllms_rule(text, new, stop, include, expected) -> None:
    assert check_stop_strings(text, new, stop, include) == expected


def _feed(checker: StopChecker, pieces: list[str]) -> tuple[int, int | None, str]:
    """Feed one token at a time; return (tokens fed, tokens kept of the last, streamed text)."""
    streamed = []
    for i, piece in enumerate(pieces):
        keep = checker.update([piece])
        streamed.append(checker.next_text(finished=keep is not None))
        if keep is not None:
            return i + 1, keep, "".join(streamed)
    streamed.append(checker.next_text(finished=True))
    return len(pieces), None, "".join(streamed)


@pytest.mark.parametrize("pieces, stop, min_tokens, include, fed, text", [
    (["he", "llo", " wo", "rld"], ("lo w",), 0, False, 3, "hel"),         # straddles tokens 2|3
    (["he", "llo", " wo", "rld"], ("lo w",), 0, True, 3, "hello w"),
    (["he", "llo", " wo", "rld"], ("he",), 1, False, 4, "hello world"),   # before min_tokens: ignored
    (["he", "llo", " he", "y"], ("he",), 1, False, 3, "hello "),          # ... but found after it
    (["a", "b", "c"], ("zz",), 0, False, 3, "abc"),                        # held back, flushed at the end
])  # fmt: skip
def test_stop_checker_fed_token_by_token(pieces, stop, min_tokens, include, fed, text) -> None:
    checker = StopChecker(stop, min_tokens, include)
    got_fed, _, streamed = _feed(checker, pieces)
    assert (got_fed, streamed, checker.text) == (fed, text, text)


def test_streamed_text_never_shows_part_of_a_stop_string() -> None:
    checker = StopChecker(("STOP",))
    shown = []
    for piece in ["ab", "cS", "TO", "P", "x"]:
        if checker.update([piece]) is not None:
            shown.append(checker.next_text(finished=True))
            break
        shown.append(checker.next_text(finished=False))
        assert "S" not in "".join(shown), "a possible stop-string start is held back"
    assert shown == ["", "a", "bc", ""] and checker.matched == "STOP"


def test_several_tokens_at_once_keep_only_up_to_the_stop() -> None:
    checker = StopChecker(("cd",))
    assert checker.update(["ab", "c", "d", "ef"]) == 3 and checker.text == "abc"[:2] and checker.tokens == 3


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model_dir())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_resuming_anywhere_gives_the_unsliced_text(tokenizer, data) -> None:
    """Byte-level tokens of multi-byte text, cut at random points: the resumed detokenizer's
    pieces concatenate to exactly the one-pass text, held-back half characters included."""
    text = data.draw(st.text(alphabet="aé日本ü€ 😀-x", min_size=1, max_size=30))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    # Random byte tokens too: a random-weight model produces invalid and split sequences.
    ids += data.draw(st.lists(st.integers(4, 259), max_size=12))
    prompt = tokenizer.encode("Grüße ", add_special_tokens=False).ids
    whole = TextStream.resume(tokenizer, prompt)
    expected = "".join(whole.step(t) for t in ids)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(ids) - 1)), max_size=6)))
    pieces, pending, start = [], 0, 0
    for end in [*cuts, len(ids)]:
        stream = TextStream.resume(tokenizer, prompt + ids[:start], pending)
        pieces += [stream.step(t) for t in ids[start:end]]
        pending, start = stream.pending, end
    assert "".join(pieces) == expected
