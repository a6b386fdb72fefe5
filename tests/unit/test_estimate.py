"""The estimator of `dcmpress estimate`: allocation, projection, interval, headers, page."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from dcmpress.estimate import (
    NOT_DICOM,
    PRICES,
    Entry,
    Header,
    LocalSource,
    Population,
    Sample,
    allocate,
    build_report,
    build_strata,
    money,
    price_per_gb_month,
    read_header,
    render_estimate_html,
    size_class,
)
from dcmpress.stack.samples import make_image, to_bytes
from producer.sources import KeyFilter
from worker.codec.options import CompressionOptions
from worker.codec.parse import HeaderIncomplete
from worker.codec.parse import read_header as parse_header


def test_size_classes_are_log_scale_by_four() -> None:
    assert [size_class(s) for s in (0, 16383, 16384, 65535, 65536, 4 * 2**20)] == [
        0, 0, 1, 1, 2, 5,
    ]  # fmt: skip


def test_allocation_gives_every_stratum_its_minimum_and_adds_up() -> None:
    weights = {"a": 1000.0, "b": 10.0, "c": 1.0, "d": 500.0}
    available = {"a": 100, "b": 3, "c": 1, "d": 50}
    given = allocate(weights, available, 40, 2)
    assert sum(given.values()) == 40
    assert given["b"] >= 2 and given["c"] == 1  # all it has
    assert given["a"] > given["d"] > given["b"]
    assert all(given[s] <= available[s] for s in given)
    # more asked than there is: everything
    assert allocate(weights, available, 1000, 2) == available
    # too few for the minimum: the heaviest first
    assert allocate(weights, available, 2, 2) == {"a": 1, "b": 0, "c": 0, "d": 1}


# A known population: four kinds whose saving per byte differs, sizes over three classes.
KINDS = {"CT": 0.6, "MR": 0.45, "compressed": 0.0, NOT_DICOM: 0.0}


def _population(seed: int = 7) -> list[tuple[Entry, str, int]]:
    rng = random.Random(seed)
    items = []
    for index in range(3000):
        kind = rng.choice(list(KINDS))
        size = int(rng.lognormvariate(11.5, 1.2)) + 200
        saved = int(size * max(0.0, KINDS[kind] + rng.gauss(0, 0.08))) if KINDS[kind] else 0
        items.append((Entry(f"k{index}", size), kind, saved))
    return items


def _run(items: list[tuple[Entry, str, int]], seed: int, headers: int, sample: int) -> dict:
    rng = random.Random(seed)
    population = Population(headers, rng)
    for entry, _, _ in items:
        population.add(entry)
    truth = {entry.key: (kind, saved) for entry, kind, saved in items}
    counts = allocate(
        {i: float(g.bytes) for i, g in population.classes.items()},
        {i: len(g.reservoir) for i, g in population.classes.items()},
        headers,
        10,
    )
    chosen = [e for i in sorted(counts) for e in rng.sample(population.classes[i].reservoir,
                                                            counts[i])]  # fmt: skip
    header_list = [Header(e.key, e.size, truth[e.key][0]) for e in chosen]
    strata = build_strata(population, header_list, [])
    members: dict = {}
    for h in header_list:
        members.setdefault((size_class(h.size), h.kind, h.rule), []).append(h)
    sizes = allocate({s.key: s.bytes for s in strata},
                     {k: len(v) for k, v in members.items()}, sample, 2)  # fmt: skip
    samples = []
    for key in sorted(members):
        for h in rng.sample(members[key], sizes[key]):
            saved = truth[h.key][1]
            compressed = saved > 0
            samples.append(Sample(
                h.key, h.size, "done" if compressed else "skipped",
                "compressed" if compressed else "already_compressed",
                bytes_out=h.size - saved, compressed=compressed,
                target="jpeg-ls" if compressed else "", engine_cpu=h.size / 25e6,
            ))  # fmt: skip
    return build_report("test", CompressionOptions(), None, population, header_list, samples,
                        10.0, 0.023, "given", "STANDARD", seed, replicates=400)  # fmt: skip


def test_a_fully_sampled_population_gives_the_exact_answer_and_no_spread() -> None:
    items = _population()
    report = _run(items, seed=1, headers=len(items), sample=len(items))
    truth = sum(saved for _, _, saved in items)
    assert report["saving"]["bytes"] == pytest.approx(truth, rel=1e-9)
    assert report["saving"]["low"] == pytest.approx(truth, rel=1e-6)
    assert report["saving"]["high"] == pytest.approx(truth, rel=1e-6)
    engine = sum(e.size / 25e6 for e, _, _ in items) + 0.010 * len(items)
    assert report["cpu"]["seconds"] == pytest.approx(engine, rel=1e-9)


def test_the_interval_covers_the_truth_in_most_seeded_repetitions() -> None:
    items = _population()
    truth = sum(saved for _, _, saved in items)
    covered, errors = 0, []
    repetitions = 60
    for seed in range(repetitions):  # fixed seeds: the same answer on every run
        saving = _run(items, seed=seed, headers=600, sample=120)["saving"]
        covered += saving["low"] <= truth <= saving["high"]
        errors.append(abs(saving["bytes"] - truth) / truth)
    assert covered >= 0.85 * repetitions, covered
    assert sum(errors) / repetitions < 0.05


def test_per_target_and_per_modality_rows_add_up_to_the_totals() -> None:
    report = _run(_population(), seed=3, headers=600, sample=120)
    for name in ("by_target", "by_modality"):
        assert sum(r["saved"] for r in report[name]) == pytest.approx(
            report["saving"]["bytes"], rel=1e-6, abs=5
        )
    targets = {r["label"] for r in report["by_target"]}
    assert targets == {"jpeg-ls", "copy/skip"}
    cpu = sum(r["cpu_seconds"] for r in report["by_target"])
    assert cpu == pytest.approx(report["cpu"]["seconds"], rel=1e-6)
    json.dumps(report)  # serialisable
    assert set(report) >= {"population", "sample", "saving", "cpu", "money", "strata",
                           "outcomes", "failed_samples", "notes"}  # fmt: skip


def test_prices_come_from_the_table_unless_given() -> None:
    assert price_per_gb_month("standard", None) == (0.023, "AWS S3 us-east-1 list price")
    assert price_per_gb_month("GLACIER-IR", None)[0] == PRICES["GLACIER_IR"] == 0.004
    assert price_per_gb_month("DEEP_ARCHIVE", 0.5) == (0.5, "given")
    with pytest.raises(ValueError, match="unknown storage class"):
        price_per_gb_month("COLD", None)
    assert money((2**30 * 100, 2**30 * 90, 2**30 * 110), 0.023) == {
        "monthly": 2.3, "monthly_low": 2.07, "monthly_high": 2.53,
        "yearly": 27.6, "yearly_low": 24.84, "yearly_high": 30.36,
    }  # fmt: skip


def _long_header_file(tmp_path: Path) -> Path:
    ds = make_image(512, 512, bits_stored=12)
    ds.Modality = "MR"
    ds.add_new(0x00091010, "OB", b"\0" * 200_000)  # a private block before Pixel Data
    path = tmp_path / "long.dcm"
    path.write_bytes(to_bytes(ds))
    return path


def test_a_header_longer_than_the_first_read_is_read_further(tmp_path: Path) -> None:
    path = _long_header_file(tmp_path)
    data = path.read_bytes()
    with pytest.raises(HeaderIncomplete):
        parse_header(data[:65536], whole=False)
    source = LocalSource([path], KeyFilter())
    header = read_header(source, Entry(str(path), len(data)), None)
    assert header.kind == "MR"
    assert 200_000 < header.bytes_read < len(data)  # grew, and stopped before the pixels


def test_non_dicom_and_broken_objects_are_their_own_kinds(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"hello, not an image\n" * 100)
    broken = to_bytes(make_image(64, 64))
    (tmp_path / "broken.dcm").write_bytes(broken[:132] + b"\xff" * 300)
    source = LocalSource([tmp_path], KeyFilter())
    kinds = {Path(e.key).name: read_header(source, e, None).kind for e in source.entries()}
    assert kinds["notes.txt"] == NOT_DICOM
    assert kinds["broken.dcm"] in ("unreadable", NOT_DICOM)


def test_the_page_escapes_hostile_keys_and_modalities() -> None:
    hostile = '<script>alert("x")</script>'
    population = Population(10, random.Random(0))
    population.add(Entry(hostile, 1000))
    header = Header(hostile, 1000, hostile, hostile, hostile)
    sample = Sample(hostile, 1000, "failed", "invalid_dicom", hostile)
    report = build_report(hostile, CompressionOptions(), hostile, population, [header], [sample],
                          10.0, 0.023, "given", "STANDARD", 0, replicates=10)  # fmt: skip
    page = render_estimate_html(report)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # only the JSON data block
    assert report["failed_samples"] == [
        {"key": hostile, "code": "invalid_dicom", "message": hostile}
    ]


def test_bad_input_is_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dcmpress.cli import app

    (tmp_path / "a.dcm").write_bytes(to_bytes(make_image(16, 16)))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nwhen = { Modalty = "CT" }\ntarget = ["rle"]\n')
    cases = {
        ("--policy", str(bad)): "bad.toml:3: rule 1 ('x'), field when",
        ("--storage-class", "PAPER"): "unknown storage class 'PAPER'",
        ("--sample", "0"): "--sample and --headers must be at least 1",
    }
    for flags, expected in cases.items():
        done = CliRunner().invoke(app, ["estimate", str(tmp_path), *flags])
        assert done.exit_code == 2 and expected in done.output, (flags, done.output)
    missing = CliRunner().invoke(app, ["estimate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such file or directory" in missing.output


def test_a_local_estimate_under_a_policy_names_its_rules(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dcmpress.cli import app

    for index, modality in enumerate(["CT", "CT", "SR", "SR"]):
        ds = make_image(64, 64, bits_stored=12, seed=index)
        ds.Modality = modality
        (tmp_path / f"{index}.dcm").write_bytes(to_bytes(ds))
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[rule]]\nname = "copy SR"\nwhen = { Modality = "SR" }\naction = "copy"\n\n'
        '[[rule]]\nname = "default"\ntarget = ["rle"]\n'
    )
    done = CliRunner().invoke(
        app, ["estimate", str(tmp_path), "--policy", str(policy), "--json", "-j", "1"]
    )
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {row["rule"] for row in report["strata"]} >= {"copy SR", "default"}
    targets = {row["label"]: row for row in report["by_target"]}
    assert set(targets) == {"rle", "copy/skip"}
    assert targets["copy/skip"]["saved"] == 0 and targets["rle"]["saved"] > 0


def _part10_without_standard_elements() -> bytes:
    """A valid preamble and file meta, then one element the dictionary does not know."""
    image = to_bytes(make_image(8, 8))
    meta_end = 132 + 12 + int.from_bytes(image[140:144], "little")  # (0002,0000) value
    element = (0x7777).to_bytes(2, "little") + (0x0010).to_bytes(2, "little")
    return image[:meta_end] + element + b"LO" + (4).to_bytes(2, "little") + b"junk"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, not an image\n" * 100,
        _part10_without_standard_elements(),
        to_bytes(make_image(16, 16))[132 + 4 :],  # no DICM prefix, no data set start either
    ],
    ids=["text", "no-standard-element", "cut-meta"],
)
def test_a_whole_header_gets_the_code_the_engine_gives_the_object(data: bytes) -> None:
    """The estimate predicts the engine: both decide with worker.codec.parse."""
    from worker.codec.engine import process
    from worker.errors import PermanentError

    engine = process(data, CompressionOptions())
    with pytest.raises(PermanentError) as refused:
        parse_header(data, whole=True)
    assert refused.value.code == engine.code
    assert engine.code in ("not_dicom", "invalid_dicom", "not_an_instance")


def test_a_raw_data_set_header_is_read_without_the_part10_prefix() -> None:
    ds = make_image(16, 16)
    raw = io.BytesIO()
    del ds.file_meta  # no preamble, no DICM, no file meta: as old modalities wrote them
    ds.save_as(raw, enforce_file_format=False, implicit_vr=True, little_endian=True)
    header = parse_header(raw.getvalue(), whole=True)
    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in header
