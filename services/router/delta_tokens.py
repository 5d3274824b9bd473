"""How many tokens a delta carries, read off its bytes without parsing the message.

The router forwards deltas as bytes; to meter a call that ends without a finished event (the
client went away, the replica failed) it still needs the count of tokens delivered. A
serialized GenerateResponse delta is: tag 0x12, length, then DeltaEvent fields — text (tag
0x0A) and token_ids (tag 0x12, packed varints). Every varint ends in one byte below 0x80, so
the count is the packed field's bytes minus those with the high bit set, counted in C."""
_CONTINUATION_BYTES = bytes(range(0x80, 0x100))


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def delta_token_count(raw: bytes) -> int:
    """Tokens in a serialized GenerateResponse that holds a delta; 0 for anything else."""
    if not raw or raw[0] != 0x12:
        return 0
    _, at = _varint(raw, 1)  # the DeltaEvent's length; it runs to the end
    count = 0
    while at < len(raw):
        tag = raw[at]
        length, at = _varint(raw, at + 1)
        if tag == 0x12:
            count += len(raw[at:at + length].translate(None, _CONTINUATION_BYTES))
        elif tag & 0x07 != 2:  # only length-delimited fields are defined; stop at anything else
            break
        at += length
    return count
