from app.text.stops import StopMatcher


def feed(m: StopMatcher, pieces: list[str]) -> str:
    out = ""
    for p in pieces:
        out += m.push(p)
        if m.stopped:
            return out
    return out + m.flush()


def test_stop_inside_one_piece() -> None:
    m = StopMatcher(["END"])
    assert feed(m, ["hello END world"]) == "hello "
    assert m.stopped


def test_stop_across_token_boundaries() -> None:
    m = StopMatcher(["</answer>"])
    assert feed(m, ["42 ", "</", "ans", "wer", ">", "more"]) == "42 "
    assert m.stopped


def test_partial_prefix_released_when_it_diverges() -> None:
    m = StopMatcher(["STOP"])
    assert m.push("ST") == ""  # could be the start of STOP
    assert m.push("AR") == "STAR"
    assert not m.stopped


def test_held_text_flushed_at_end() -> None:
    m = StopMatcher(["\n\n"])
    assert m.push("line\n") == "line"
    assert m.flush() == "\n"


def test_earliest_of_several_stops_wins() -> None:
    m = StopMatcher(["b", "abc"])
    # "abc" starts before "b" does, so the text stops before "a"
    assert feed(m, ["xa", "bc"]) == "x"


def test_no_stops_passthrough() -> None:
    m = StopMatcher([])
    assert m.push("abc") == "abc" and m.flush() == ""


def test_empty_stop_strings_ignored() -> None:
    m = StopMatcher(["", "X"])
    assert feed(m, ["aXb"]) == "a"
