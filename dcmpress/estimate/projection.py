"""An estimate's projection: a stratified ratio estimator with a bootstrap interval.

Per stratum, bytes saved (or written, or CPU) per byte in of its compressed sample,
times the stratum's bytes, which are the size class's listed bytes times the stratum's
share of the class's header sample. The interval is a percentile bootstrap that
resamples both phases within strata (the Rao-Wu rescaled bootstrap, so a stratum
sampled whole adds no uncertainty).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dcmpress.estimate.headers import Header
from dcmpress.estimate.measure import Sample
from dcmpress.estimate.population import Population, size_class

BOOTSTRAP = 1000
CONFIDENCE = 0.95
StratumKey = tuple[int, str, str]  # size class, kind, rule
QUANTITIES = ("saved", "bytes_out", "written_in", "cpu")


@dataclass
class Stratum:
    """One stratum: its projected share of its size class, and its compressed sample."""

    key: StratumKey
    header_sizes: list[int] = field(default_factory=list)  # its objects in the class's
    # header sample
    bytes: float = 0.0  # projected
    objects: float = 0.0  # projected
    samples: list[Sample] = field(default_factory=list)
    donor: str = ""  # where its rates come from if it has no sample of its own


def sample_rates(samples: list[Sample]) -> dict[str, float]:
    """Per byte in: bytes saved, bytes written, bytes in of written objects, CPU;
    and per object: the share of objects written."""
    size = sum(s.size for s in samples) or 1
    return {
        "saved": sum(s.saved for s in samples) / size,
        "bytes_out": sum(s.bytes_out for s in samples) / size,
        "written_in": sum(s.size for s in samples if s.written) / size,
        "cpu": sum(s.cpu for s in samples) / size,
    }


def _values(samples: list[Sample]) -> np.ndarray:
    """Rows: size, then each of QUANTITIES, per sample."""
    return np.array(
        [[s.size, s.saved, s.bytes_out, s.size if s.written else 0, s.cpu] for s in samples],
        dtype=np.float64,
    ).reshape(len(samples), 1 + len(QUANTITIES))


def _rate_replicates(
    samples: list[Sample], fraction: float, rng: np.random.Generator, replicates: int
) -> np.ndarray:
    """Bootstrap replicates (replicates x QUANTITIES) of the per-byte rates.

    Rao-Wu rescaled bootstrap: n-1 draws with replacement, deviations scaled by
    sqrt(1 - sampling fraction); a single sample gives no spread.
    """
    values = _values(samples)
    point = values[:, 1:].sum(axis=0) / max(values[:, 0].sum(), 1.0)
    if len(samples) < 2:
        return np.tile(point, (replicates, 1))
    draws = rng.integers(0, len(samples), size=(replicates, len(samples) - 1))
    picked = values[draws]  # replicates x (n-1) x columns
    sizes = np.maximum(picked[:, :, 0].sum(axis=1), 1.0)
    rates = picked[:, :, 1:].sum(axis=1) / sizes[:, None]
    scale = math.sqrt(max(0.0, 1.0 - fraction))
    return np.asarray(point + scale * (rates - point))


def _share_replicates(
    kinds: list[int], sizes: list[int], strata: int, fraction: float,
    rng: np.random.Generator, replicates: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Replicates (replicates x strata) of the byte and object shares of each stratum
    in a size class's header sample (rescaled as in :func:`_rate_replicates`)."""
    labels = np.asarray(kinds)
    weights = np.asarray(sizes, dtype=np.float64)
    onehot = np.eye(strata)[labels]  # n x strata
    byte_point = (onehot * weights[:, None]).sum(axis=0) / max(weights.sum(), 1.0)
    count_point = onehot.mean(axis=0)
    if len(kinds) < 2:
        return np.tile(byte_point, (replicates, 1)), np.tile(count_point, (replicates, 1))
    draws = rng.integers(0, len(kinds), size=(replicates, len(kinds) - 1))
    picked = onehot[draws]  # replicates x (n-1) x strata
    picked_bytes = (picked * weights[draws][:, :, None]).sum(axis=1)
    byte_shares = picked_bytes / np.maximum(picked_bytes.sum(axis=1, keepdims=True), 1.0)
    count_shares = picked.mean(axis=1)
    scale = math.sqrt(max(0.0, 1.0 - fraction))
    return (
        byte_point + scale * (byte_shares - byte_point),
        count_point + scale * (count_shares - count_point),
    )


def build_strata(
    population: Population, headers: list[Header], samples: list[Sample]
) -> list[Stratum]:
    """Strata with their projected bytes and objects, and their samples."""
    strata: dict[StratumKey, Stratum] = {}
    header_totals: Counter[int] = Counter()
    header_counts: Counter[int] = Counter()
    for header in headers:
        key = (size_class(header.size), header.kind, header.rule)
        stratum = strata.setdefault(key, Stratum(key))
        stratum.header_sizes.append(header.size)
        header_totals[key[0]] += header.size
        header_counts[key[0]] += 1
    for stratum in strata.values():
        group = population.classes[stratum.key[0]]
        share = sum(stratum.header_sizes) / max(header_totals[stratum.key[0]], 1)
        stratum.bytes = group.bytes * share
        stratum.objects = group.objects * len(stratum.header_sizes) / header_counts[stratum.key[0]]
    where = {h.key: (size_class(h.size), h.kind, h.rule) for h in headers}
    for sample in samples:
        strata[where[sample.key]].samples.append(sample)
    return sorted(strata.values(), key=lambda s: s.key)


def _donors(strata: list[Stratum]) -> dict[StratumKey, list[Sample]]:
    """The samples each stratum's rates come from: its own; else those of the same
    kind and rule in other size classes; else every sample."""
    everything = [s for stratum in strata for s in stratum.samples]
    same: dict[tuple[str, str], list[Sample]] = {}
    for stratum in strata:
        same.setdefault(stratum.key[1:], []).extend(stratum.samples)
    chosen: dict[StratumKey, list[Sample]] = {}
    for stratum in strata:
        if stratum.samples:
            chosen[stratum.key] = stratum.samples
        elif same[stratum.key[1:]]:
            chosen[stratum.key] = same[stratum.key[1:]]
            stratum.donor = "same kind, other sizes"
        else:
            chosen[stratum.key] = everything
            stratum.donor = "all samples"
    return chosen


@dataclass
class Projection:
    """Point estimates and bootstrap intervals of the totals."""

    totals: dict[str, float]  # QUANTITIES plus "objects" and "overhead_cpu"
    low: dict[str, float]
    high: dict[str, float]


def project(
    population: Population,
    strata: list[Stratum],
    overhead_seconds: float,
    seed: int = 0,
    replicates: int = BOOTSTRAP,
    confidence: float = CONFIDENCE,
) -> Projection:
    """Project the totals over the whole population, with percentile intervals from
    the rescaled bootstrap of both phases."""
    rng = np.random.default_rng(seed)
    donors = _donors(strata)
    n_q = len(QUANTITIES)
    point = np.zeros(n_q)
    point_objects = 0.0
    boot = np.zeros((replicates, n_q))
    boot_objects = np.zeros(replicates)
    rate_boot: dict[int, np.ndarray] = {}  # id of a donor list -> its replicates
    by_class: dict[int, list[Stratum]] = {}
    for stratum in strata:
        by_class.setdefault(stratum.key[0], []).append(stratum)
    for index, members in by_class.items():
        group = population.classes[index]
        # the class's header sample: stratum number and size per object
        kinds = [number for number, s in enumerate(members) for _ in s.header_sizes]
        sizes = [size for s in members for size in s.header_sizes]
        header_objects = len(sizes)
        byte_share, count_share = _share_replicates(
            kinds, sizes, len(members), header_objects / max(group.objects, 1), rng, replicates
        )
        for number, stratum in enumerate(members):
            samples = donors[stratum.key]
            own = bool(stratum.samples)
            fraction = len(samples) / max(stratum.objects, 1.0) if own else 0.0
            if id(samples) not in rate_boot:
                rate_boot[id(samples)] = _rate_replicates(
                    samples, min(fraction, 1.0), rng, replicates
                )
            rates = np.array([sample_rates(samples)[q] for q in QUANTITIES])
            point += stratum.bytes * rates
            point_objects += stratum.objects
            boot += (group.bytes * byte_share[:, number])[:, None] * rate_boot[id(samples)]
            boot_objects += group.objects * count_share[:, number]
    point_cpu_total = point.copy()
    point_cpu_total[QUANTITIES.index("cpu")] += overhead_seconds * point_objects
    boot[:, QUANTITIES.index("cpu")] += overhead_seconds * boot_objects
    tail = (1.0 - confidence) / 2 * 100
    low = np.percentile(boot, tail, axis=0)
    high = np.percentile(boot, 100 - tail, axis=0)
    names = list(QUANTITIES)
    totals = dict(zip(names, point_cpu_total.tolist(), strict=True))
    totals["objects"] = point_objects
    totals["overhead_cpu"] = overhead_seconds * point_objects
    return Projection(
        totals,
        dict(zip(names, np.minimum(low, point_cpu_total).tolist(), strict=True)),
        dict(zip(names, np.maximum(high, point_cpu_total).tolist(), strict=True)),
    )


def by_domain(
    strata: list[Stratum], overhead_seconds: float, label: Callable[[Stratum, Sample], str]
) -> list[dict[str, Any]]:
    """Projected totals per domain (a target, a modality): each stratum's bytes split
    by the byte shares of its samples in the domain, its objects by their count."""
    donors = _donors(strata)
    rows: dict[str, dict[str, Any]] = {}
    for stratum in strata:
        samples = donors[stratum.key]
        size = sum(s.size for s in samples) or 1
        for sample in samples:
            name = label(stratum, sample)
            row = rows.setdefault(name, {
                "label": name, "objects": 0.0, "bytes_in": 0.0, "bytes_out": 0.0,
                "written_in": 0.0, "saved": 0.0, "cpu_seconds": 0.0, "samples": 0,
            })  # fmt: skip
            weight = stratum.bytes / size
            objects = stratum.objects / len(samples)
            row["objects"] += objects
            row["bytes_in"] += sample.size * weight
            row["bytes_out"] += sample.bytes_out * weight
            row["written_in"] += (sample.size if sample.written else 0) * weight
            row["saved"] += sample.saved * weight
            row["cpu_seconds"] += sample.cpu * weight + overhead_seconds * objects
            row["samples"] += 1 if any(own is sample for own in stratum.samples) else 0
    out = []
    for row in rows.values():
        row["ratio"] = round(row["written_in"] / row["bytes_out"], 4) if row["bytes_out"] else None
        row["core_hours"] = row["cpu_seconds"] / 3600
        for name in ("objects", "bytes_in", "bytes_out", "written_in", "saved"):
            row[name] = round(row[name])
        out.append(row)
    return sorted(out, key=lambda row: (-row["saved"], -row["bytes_in"], row["label"]))
