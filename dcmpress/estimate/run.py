"""An estimate's run: list, read a sample of headers, compress a sample of objects."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dcmpress.estimate.headers import Header, read_headers
from dcmpress.estimate.measure import Sample, compress_sample
from dcmpress.estimate.population import Entry, Population, allocate, size_class
from dcmpress.estimate.projection import StratumKey, build_strata
from dcmpress.estimate.sources import Source
from worker.codec.options import CompressionOptions
from worker.policy import Policy

HEADERS_PER_CLASS = 10  # header sample of a size class, at least (if it has them)
SAMPLES_PER_STRATUM = 2  # compressed sample of a stratum, at least (if it has them)


@dataclass
class Plan:
    """What the run samples: the population, then headers, then compression."""

    sample: int = 200
    headers: int = 1000
    seed: int = 0
    processes: int = 1


Progress = Callable[[str, int, int], None]  # phase, done, total


def run_estimate(
    source: Source,
    options: CompressionOptions,
    policy: Policy | None,
    plan: Plan,
    progress: Progress | None = None,
) -> tuple[Population, list[Header], list[Sample]]:
    """List, read headers, compress the sample: everything :func:`build_report` needs."""
    rng = random.Random(plan.seed)
    headers_total = max(plan.headers, plan.sample)
    population = Population(headers_total, rng)
    for count, entry in enumerate(source.entries(), 1):
        population.add(entry)
        if progress is not None and count % 1000 == 0:
            progress("list", count, 0)
    if progress is not None:
        progress("list", population.objects, population.objects)
    classes = population.classes
    counts = allocate(
        {i: float(g.bytes) for i, g in classes.items()},
        {i: len(g.reservoir) for i, g in classes.items()},
        max(headers_total, len(classes)),
        HEADERS_PER_CLASS,
    )
    chosen = [
        entry
        for index in sorted(classes)
        for entry in rng.sample(classes[index].reservoir, counts[index])
    ]
    headers = read_headers(source, chosen, policy, _counter(progress, "headers", len(chosen)))
    strata = build_strata(population, headers, [])
    members: dict[StratumKey, list[Header]] = {}
    for header in headers:
        members.setdefault((size_class(header.size), header.kind, header.rule), []).append(header)
    sizes = allocate(
        {s.key: s.bytes for s in strata},
        {key: len(group) for key, group in members.items()},
        plan.sample,
        SAMPLES_PER_STRATUM,
    )
    picked = [
        Entry(h.key, h.size)
        for key in sorted(members)
        for h in rng.sample(members[key], sizes[key])
    ]
    done = _counter(progress, "compress", len(picked))
    samples = compress_sample(source, picked, options, policy, plan.processes, done)
    return population, headers, samples


def _counter(progress: Progress | None, phase: str, total: int) -> Callable[[Any], None]:
    """A callback that reports one more of ``total`` done in ``phase`` each call."""
    finished = 0

    def one_more(_: Any) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(phase, finished, total)

    return one_more
