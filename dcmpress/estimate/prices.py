"""What the bytes an estimate saves are worth: storage prices per GB-month."""

from __future__ import annotations

GB = 2**30  # S3 bills a GB-month of 2^30 bytes
# AWS S3 us-east-1 list prices, USD per GB-month (check against your own bill)
PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,  # its frequent access tier
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}


def price_per_gb_month(storage_class: str, price: float | None) -> tuple[float, str]:
    """The price to use and where it comes from: the one given, or the list price of
    ``storage_class`` (ValueError for a class not in :data:`PRICES`)."""
    if price is not None:
        if price < 0:
            raise ValueError("--price-per-gb-month must not be negative")
        return price, "given"
    name = storage_class.upper().replace("-", "_")
    if name not in PRICES:
        known = ", ".join(PRICES)
        raise ValueError(f"unknown storage class {storage_class!r}; known: {known} "
                         "(or give --price-per-gb-month)")  # fmt: skip
    return PRICES[name], "AWS S3 us-east-1 list price"


def money(saved: tuple[float, float, float], price: float) -> dict[str, float]:
    """Monthly and yearly saving for bytes saved (estimate, low, high) at ``price``."""
    monthly = [value / GB * price for value in saved]
    return {
        "monthly": round(monthly[0], 2), "monthly_low": round(monthly[1], 2),
        "monthly_high": round(monthly[2], 2), "yearly": round(12 * monthly[0], 2),
        "yearly_low": round(12 * monthly[1], 2), "yearly_high": round(12 * monthly[2], 2),
    }  # fmt: skip
