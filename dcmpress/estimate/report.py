"""The whole estimate as one JSON-serialisable report: projection, money, per modality,
per target, per stratum, outcomes and the notes that say what the figures mean."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from dcmpress.estimate.headers import Header
from dcmpress.estimate.measure import Sample
from dcmpress.estimate.population import Population, size_class_label
from dcmpress.estimate.prices import money
from dcmpress.estimate.projection import (
    BOOTSTRAP,
    CONFIDENCE,
    Stratum,
    build_strata,
    by_domain,
    project,
    sample_rates,
)
from worker.codec.options import CompressionOptions

INTERVAL_NOTE = (
    "The interval is a {confidence:.0%} percentile bootstrap: both sampling phases "
    "(which headers, which objects compressed) are resampled within their strata "
    "{replicates} times; it covers the sampling error only, not a change of the data or "
    "of the code between this estimate and the run."
)
CPU_NOTE = (
    "CPU: fetch (GET) and engine (parse, decode, encode, verify) as measured per sampled "
    "object, the upload estimated as the GET's CPU per byte written, plus {overhead:g} ms "
    "per object for the rest (a worker's destination HEAD, PUT or copy request, Redis and "
    "Celery; for local files the pool and the record); not the S3 server's, Redis's or "
    "the producer's CPU."
)
NOT_WRITTEN_NOTE = (
    "Objects whose outcome writes nothing (policy skip, failures) are not in the "
    "destination and not counted as saved; copied objects save nothing."
)


def build_report(
    source: str,
    options: CompressionOptions,
    policy_path: str | None,
    population: Population,
    headers: list[Header],
    samples: list[Sample],
    overhead_ms: float,
    price: float,
    price_source: str,
    storage_class: str,
    seed: int,
    filtered: dict[str, int] | None = None,
    replicates: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The whole estimate, JSON-serialisable (``dcmpress estimate --json``)."""
    overhead = overhead_ms / 1000
    strata = build_strata(population, headers, samples)
    result = project(population, strata, overhead, seed, replicates, confidence)
    totals, low, high = result.totals, result.low, result.high
    written_in, bytes_out = totals["written_in"], totals["bytes_out"]
    saved = (totals["saved"], low["saved"], high["saved"])
    outcomes = Counter((s.outcome, s.code) for s in samples)
    failed = sorted((s for s in samples if s.outcome == "failed"), key=lambda s: s.key)
    return {
        "source": source,
        "target": options.target,
        "policy": policy_path,
        "population": {
            "objects": population.objects,
            "bytes": population.bytes,
            "filtered": dict(filtered or {}),
        },
        "sample": {
            "headers": len(headers),
            "header_bytes_read": sum(h.bytes_read for h in headers),
            "compressed": len(samples),
            "compressed_bytes": sum(s.size for s in samples),
            "seed": seed,
        },
        "saving": {
            "bytes": round(saved[0]),
            "low": round(saved[1]),
            "high": round(saved[2]),
            "confidence": confidence,
            "percent": round(100 * saved[0] / population.bytes, 2) if population.bytes else 0.0,
            "bytes_written": round(bytes_out),
            "bytes_written_low": round(low["bytes_out"]),
            "bytes_written_high": round(high["bytes_out"]),
            "written_in": round(written_in),
            "not_written": round(max(population.bytes - written_in, 0.0)),
            "ratio": round(written_in / bytes_out, 4) if bytes_out else None,
        },
        "cpu": {
            "core_hours": totals["cpu"] / 3600,
            "low": low["cpu"] / 3600,
            "high": high["cpu"] / 3600,
            "seconds": totals["cpu"],
            "overhead_ms_per_object": overhead_ms,
            "overhead_seconds": totals["overhead_cpu"],
            "sample_fetch_seconds": sum(s.fetch_cpu for s in samples),
            "sample_engine_seconds": sum(s.engine_cpu for s in samples),
        },
        "money": {
            "storage_class": storage_class,
            "price_per_gb_month": price,
            "price_source": price_source,
            "gb": "2^30 bytes",
            **money(saved, price),
        },
        "by_modality": by_domain(strata, overhead, lambda stratum, _: stratum.key[1]),
        "by_target": by_domain(strata, overhead, lambda _, sample: sample.label),
        "strata": [_stratum_row(stratum) for stratum in strata],
        "outcomes": [
            {"outcome": outcome, "code": code, "count": count}
            for (outcome, code), count in sorted(outcomes.items(), key=lambda i: (-i[1], i[0]))
        ],
        "failed_samples": [{"key": s.key, "code": s.code, "message": s.message} for s in failed],
        "notes": [
            INTERVAL_NOTE.format(confidence=confidence, replicates=replicates),
            CPU_NOTE.format(overhead=overhead_ms),
            NOT_WRITTEN_NOTE,
            "Prices are list prices: check them against your own bill.",
        ],
    }


def _stratum_row(stratum: Stratum) -> dict[str, Any]:
    rates = sample_rates(stratum.samples) if stratum.samples else None
    written = rates["bytes_out"] if rates else 0.0
    return {
        "size_class": size_class_label(stratum.key[0]),
        "kind": stratum.key[1],
        "rule": stratum.key[2] or None,
        "objects": round(stratum.objects),
        "bytes": round(stratum.bytes),
        "headers": len(stratum.header_sizes),
        "samples": len(stratum.samples),
        "ratio": round(rates["written_in"] / written, 4) if rates and written else None,
        "saved": round(stratum.bytes * rates["saved"]) if rates else None,
        "rates_from": stratum.donor or "own sample",
    }


def sample_dicts(samples: list[Sample]) -> list[dict[str, Any]]:
    """The samples as JSON-serialisable dicts (with their derived fields)."""
    return [{**asdict(s), "saved": s.saved, "cpu": s.cpu} for s in samples]
