from app.text.detokenize import REPLACEMENT_CHAR, IncrementalDetokenizer

# A byte-level toy vocabulary: each token is some bytes; decode joins and decodes UTF-8.
VOCAB = {1: b"Hel", 2: b"lo", 3: b" w", 4: b"orld", 5: "é".encode()[:1], 6: "é".encode()[1:],
         7: " 日本".encode(), 8: b"!"}


def decode(ids: list[int]) -> str:
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def test_deltas_concatenate_to_full_decode() -> None:
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    d = IncrementalDetokenizer(decode)
    text = "".join(d.add(i) for i in ids) + d.flush()
    assert text == decode(ids)


def test_split_multibyte_character_is_held() -> None:
    d = IncrementalDetokenizer(decode)
    assert d.add(5) == ""  # half of "é"
    assert d.add(6) == "é"


def test_flush_emits_dangling_bytes() -> None:
    d = IncrementalDetokenizer(decode)
    d.add(1)
    d.add(5)
    assert d.flush() == "\ufffd"


def test_long_stream_matches_full_decode_across_window_jumps() -> None:
    # Long enough for the window's start to jump several times, with split characters
    # landing on every position relative to a jump.
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 3, 5, 6] * 7
    d = IncrementalDetokenizer(decode)
    deltas = [d.add(i) for i in ids]
    assert "".join(deltas) + d.flush() == decode(ids)
    assert all(REPLACEMENT_CHAR not in x for x in deltas)

