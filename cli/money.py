"""Money as people read it. The API counts int64 micro-USD; tables show dollars."""

MICRO_USD_PER_USD = 1_000_000


def dollars(micro_usd: int) -> str:
    """`$1,234.50`, `$0.0001`: whole cents always, further digits only where the amount has
    them. Integer arithmetic, so no amount is ever rounded."""
    sign = "-" if micro_usd < 0 else ""
    whole, micros = divmod(abs(micro_usd), MICRO_USD_PER_USD)
    fraction = f"{micros:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole:,}.{fraction}"
