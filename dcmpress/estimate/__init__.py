"""``dcmpress estimate``: what a migration will save and cost, from a sample.

Three phases, reading as little as they can:

1. **Population** (:mod:`.population`) - every object of the source
   (:mod:`.sources`: an S3 prefix, or local paths) is listed: its size only, kept per
   log-scale size class.
2. **Headers** (:mod:`.headers`) - a random sample of each class is read up to its
   Pixel Data only, which gives its kind (Modality, "not DICOM", ...) and its policy
   rule. A stratum is (size class, kind, rule).
3. **Compression** (:mod:`.measure`) - ``--sample`` objects from the header sample,
   allocated to strata by their projected bytes, are fetched whole and run through the
   engine as a worker does, without uploading; fetch and engine CPU are measured.

:mod:`.run` drives the three phases; :mod:`.projection` projects the totals over the
population with a bootstrap interval; :mod:`.prices` turns bytes into money;
:mod:`.report` puts it all in one JSON-serialisable report and :mod:`.report_html`
draws it as a page. No typer, no rich here: the `estimate` command prints.
"""

from dcmpress.estimate.headers import (
    HEAD_FIRST,
    HEAD_MOST,
    NOT_AN_INSTANCE,
    NOT_DICOM,
    UNREADABLE,
    Header,
    read_header,
    read_headers,
)
from dcmpress.estimate.measure import Sample, compress_sample, measure
from dcmpress.estimate.population import Entry, Population, allocate, size_class, size_class_label
from dcmpress.estimate.prices import PRICES, money, price_per_gb_month
from dcmpress.estimate.projection import Projection, Stratum, build_strata, project
from dcmpress.estimate.report import build_report, sample_dicts
from dcmpress.estimate.report_html import render_estimate_html, write_estimate_html
from dcmpress.estimate.run import Plan, Progress, run_estimate
from dcmpress.estimate.sources import Body, LocalSource, S3Source, Source, retried

__all__ = [
    "HEAD_FIRST",
    "HEAD_MOST",
    "NOT_AN_INSTANCE",
    "NOT_DICOM",
    "PRICES",
    "UNREADABLE",
    "Body",
    "Entry",
    "Header",
    "LocalSource",
    "Plan",
    "Population",
    "Progress",
    "Projection",
    "S3Source",
    "Sample",
    "Source",
    "Stratum",
    "allocate",
    "build_report",
    "build_strata",
    "compress_sample",
    "measure",
    "money",
    "price_per_gb_month",
    "project",
    "read_header",
    "read_headers",
    "render_estimate_html",
    "retried",
    "run_estimate",
    "sample_dicts",
    "size_class",
    "size_class_label",
    "write_estimate_html",
]
