"""Policies (worker/policy.py): parsing with errors that name line and field, matching
on attributes, key and size, first match wins, and ``dcmpress policy check``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import examples
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from dcmpress.cli import app
from dcmpress.stack.samples import make_image, to_bytes
from tests import docs
from worker.codec.options import CompressionOptions
from worker.errors import ConfigurationError
from worker.policy import Attribute, parse_policy, parse_size

POLICY = """
[[rule]]
name = "never lossy for segmentations"
when = { Modality = ["SEG", "RTSTRUCT"] }
target = ["jpeg-ls", "rle"]

[[rule]]
name = "copy reports"
when = { Modality = "SR" }
action = "copy"

[[rule]]
name = "localizers untouched"
when = { "ImageType[3]" = "LOCALIZER" }
action = "skip"

[[rule]]
name = "big CR near-lossless"
when = { Modality = "CR", size = { min = "1MB" }, key = { glob = "*/cr/*" } }
target = ["jpeg-ls-near"]
options = { jls_error = 3 }

[[rule]]
name = "16-bit unsigned as RLE"
when = { BitsStored = { min = 13 }, PixelRepresentation = 0, "0008,0070" = { not = "ACME" } }
target = ["rle"]

[[rule]]
name = "default"
target = ["jpeg-ls"]
"""


def header(**attributes: object) -> Dataset:
    ds = make_image(8, 8, bits_stored=12)
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def decided(ds: Dataset, key: str = "a/b.dcm", size: int = 1000) -> str:
    return parse_policy(POLICY).decide(ds, key, size).name


def test_first_match_wins_and_the_default_takes_the_rest() -> None:
    assert decided(header(Modality="SEG")) == "never lossy for segmentations"
    assert decided(header(Modality="SR")) == "copy reports"
    assert decided(header(Modality="CT")) == "default"


def test_value_index_list_and_multi_valued_attributes() -> None:
    localizer = header(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert decided(localizer) == "localizers untouched"
    axial = header(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    assert decided(axial) == "default"
    short = header(Modality="CT", ImageType=["ORIGINAL", "PRIMARY"])  # no value 3
    assert decided(short) == "default"


def test_key_glob_and_size_with_units() -> None:
    cr = header(Modality="CR")
    assert decided(cr, "site/cr/1.dcm", 2_000_000) == "big CR near-lossless"
    assert decided(cr, "site/cr/1.dcm", 900_000) == "default"  # below 1MB
    assert decided(cr, "site/dx/1.dcm", 2_000_000) == "default"  # key does not match
    assert parse_size("1.5GiB") == 1.5 * 2**30
    assert parse_size(12) == 12
    with pytest.raises(ValueError, match="not a size"):
        parse_size("big")


def test_numbers_tags_and_negation() -> None:
    assert decided(header(Modality="MR", BitsStored=16)) == "16-bit unsigned as RLE"
    assert decided(header(Modality="MR", BitsStored=16, Manufacturer="ACME")) == "default"
    assert decided(header(Modality="MR", BitsStored=12)) == "default"
    signed = header(Modality="MR", BitsStored=16, PixelRepresentation=1)
    assert decided(signed) == "default"


def test_negation_holds_for_an_absent_attribute_and_regex() -> None:
    policy = parse_policy(
        '[[rule]]\nname = "not acme"\nwhen = { Manufacturer = { not = "ACME" } }\n'
        'target = ["rle"]\n\n'
        '[[rule]]\nname = "uid regex"\nwhen = { SOPClassUID = { regex = "1\\\\.2\\\\..*" } }\n'
        'target = ["rle"]\n\n[[rule]]\nname = "default"\ntarget = ["jpeg-ls"]\n'
    )
    ds = header()
    if "Manufacturer" in ds:
        del ds.Manufacturer
    assert policy.decide(ds, "k", 1).name == "not acme"
    ds.Manufacturer = "ACME"
    assert policy.decide(ds, "k", 1).name == "uid regex"


def test_file_meta_attributes_are_matched() -> None:
    attribute = Attribute.parse("TransferSyntaxUID")
    assert attribute.meta
    ds = header()
    assert attribute.values(ds) == [str(ds.file_meta.TransferSyntaxUID)]


def test_a_rules_options_are_whole_compression_options() -> None:
    rule = parse_policy(POLICY).rule[3]
    options = rule.compression(CompressionOptions())
    assert options.target == ["jpeg-ls-near"] and options.jls_error == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\nname = "a"\nwhen = { Modality = "CT" }\ntarget = ["rle"]\n',
         "no default rule"),
        ('[[rule]]\nname = "d"\ntarget = ["rle"]\n\n[[rule]]\nname = "late"\n'
         'when = { Modality = "CT" }\ntarget = ["rle"]\n', "can never apply"),
        ('[[rule]]\nname = "x"\nwhen = { Modalty = "CT" }\ntarget = ["rle"]\n\n'
         '[[rule]]\nname = "d"\ntarget = ["rle"]\n', "policy:3: rule 1 ('x'), field when"),
        ('[[rule]]\nname = "d"\n\ntarget = ["webp"]\n', "policy:4: rule 1 ('d'), field target"),
        ('[[rule]]\nname = "d"\ntarget = ["rle"]\noptions = { jls_eror = 2 }\n',
         "jls_eror"),
        ('[[rule]]\nname = "d"\naction = "copy"\ntarget = ["rle"]\n', "takes no target"),
        ('[[rule]]\nname = "d"\ntarget = ["rle"\n', "not valid TOML"),
        ('[[rule]]\nname = "a"\nwhen = { key = { regex = "(" } }\ntarget = ["rle"]\n\n'
         '[[rule]]\nname = "d"\ntarget = ["rle"]\n', "bad regular expression"),
        ('[[rule]]\nname = "d"\ntarget = ["rle"]\n\n[[rule]]\nname = "d"\ntarget = ["rle"]\n',
         "two rules are named 'd'"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_naming_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_policy(text)
    assert expected in str(caught.value)


def test_policy_check_shows_the_rule_each_sample_takes(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "sr.dcm").write_bytes(to_bytes(header(Modality="SR")))
    (samples / "ct.dcm").write_bytes(to_bytes(examples.ct))
    (samples / "notes.txt").write_text("not DICOM")
    result = CliRunner().invoke(app, ["policy", "check", str(policy), str(samples), "--jsonl"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["sr.dcm"]["rule"] == "copy reports"
    assert rows["sr.dcm"]["action"] == "copy"
    assert rows["ct.dcm"]["rule"] == "default"
    assert rows["ct.dcm"]["target"] == ["jpeg-ls"]
    assert rows["notes.txt"]["rule"] is None and "cannot read" in rows["notes.txt"]["error"]
    missing = CliRunner().invoke(app, ["policy", "check", str(policy), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    alone = CliRunner().invoke(app, ["policy", "check", str(policy)])
    assert alone.exit_code == 0 and "6 rules, valid" in alone.output
    policy.write_text('[[rule]]\nname = "x"\nwhen = { Modality = "CT" }\ntarget = ["rle"]\n')
    bad = CliRunner().invoke(app, ["policy", "check", str(policy)])
    assert bad.exit_code == 2 and "no default rule" in bad.output


def test_the_docs_example_policy_is_valid() -> None:
    section = docs.section("Policies")
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(example)
    policy.check(CompressionOptions())

    def rule(ds: Dataset, key: str = "k", size: int = 1000) -> str:
        return policy.decide(ds, key, size).name

    assert rule(header(Modality="SR")) == "copy reports and documents"
    from tests.synthetic import segmentation

    assert rule(segmentation()) == "never lossy: segmentations"
    assert rule(header(Modality="RTDOSE")) == "never lossy: RT"
    assert rule(header(Modality="OT", BitsStored=1)) == "never lossy: 1-bit"
    localizer = header(Modality="CR", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert rule(localizer) == "localizers untouched"
    assert rule(header(Modality="MG"), size=30_000_000) == "J2K for large mammography"
    assert rule(header(Modality="MG"), size=3_000_000) == "default"
    cr = policy.decide(header(Modality="CR"), "k", 1)
    assert cr.name == "near-lossless CR/DX" and cr.compression(CompressionOptions()).max_error == 2
    cine = header(Modality="US", NumberOfFrames=30)
    assert rule(cine, "cine-ok/a.dcm") == "lossy US cine, guarded"
    assert rule(cine, "other/a.dcm") == "default"
    assert rule(header(Modality="MR")) == "lossless CT and MR"


def test_the_engine_applies_the_rule_and_names_it() -> None:
    from worker.codec.engine import process

    policy = parse_policy(POLICY)
    options = CompressionOptions()
    sr = process(to_bytes(header(Modality="SR")), options, policy=policy, key="x/sr.dcm")
    assert (sr.state, sr.code, sr.copy_source, sr.rule) == (
        "skipped", "policy_copy", True, "copy reports",
    )  # fmt: skip
    localizer = header(Modality="CT", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    skipped = process(to_bytes(localizer), options, policy=policy)
    assert (skipped.code, skipped.copy_source, skipped.output) == ("policy_skip", False, None)
    cr = process(to_bytes(header(Modality="CR")), options, policy=policy, key="a/cr/1.dcm")
    assert cr.rule == "default" and cr.target == "jpeg-ls"  # below 1MB: the default
    big = make_image(1024, 1024, bits_stored=12)
    big.Modality = "CR"
    near = process(to_bytes(big), options, policy=policy, key="a/cr/1.dcm")
    assert (near.state, near.target, near.rule) == ("done", "jpeg-ls-near", "big CR near-lossless")
    assert near.max_error is not None and near.max_error <= 3  # the rule's jls_error
    assert near.summary()["rule"] == "big CR near-lossless"
    plain = process(to_bytes(header(Modality="CT")), options)
    assert plain.rule is None and plain.target == "jpeg-ls"


def test_dcmpress_compress_applies_a_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    tree = tmp_path / "in"
    tree.mkdir()
    (tree / "sr.dcm").write_bytes(to_bytes(header(Modality="SR")))
    (tree / "mr.dcm").write_bytes(to_bytes(header(Modality="MR", BitsStored=16, HighBit=15)))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["compress", str(tree), "--out", str(out), "--policy", str(policy), "--jsonl"]
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines()[:2])}
    assert (rows["sr.dcm"]["code"], rows["sr.dcm"]["rule"]) == ("policy_copy", "copy reports")
    assert (out / "sr.dcm").read_bytes() == (tree / "sr.dcm").read_bytes()
    assert (rows["mr.dcm"]["target"], rows["mr.dcm"]["rule"]) == ("rle", "16-bit unsigned as RLE")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nwhen = { Modality = "CT" }\ntarget = ["rle"]\n')
    refused = CliRunner().invoke(
        app, ["compress", str(tree), "--out", str(out), "--policy", str(bad)]
    )
    assert refused.exit_code == 2 and "no default rule" in refused.output


def test_rule_options_that_clash_with_the_commands_are_refused_before_work() -> None:
    policy = parse_policy(
        '[[rule]]\nname = "d"\ntarget = ["j2k-lossy"]\noptions = { j2k_cr = [10] }\n'
    )
    policy.check(CompressionOptions())
    with pytest.raises(ConfigurationError, match=r"rule 1 \('d'\).*j2k_cr or j2k_psnr"):
        policy.check(CompressionOptions(j2k_psnr=[40]))


def test_a_rule_can_recompress_compressed_sources_others_leave_alone() -> None:
    """Orthanc's split, by rule: re-encode lossless RLE sources, leave other compressed
    sources as they are."""
    from pydicom.uid import RLELossless

    from worker.codec.engine import process

    policy = parse_policy(
        f"""
[[rule]]
name = "RLE to JPEG-LS"
when = {{ TransferSyntaxUID = "{RLELossless}" }}
target = ["jpeg-ls"]
options = {{ transcode = true }}

[[rule]]
name = "default"
target = ["jpeg-ls"]
"""
    )
    ds = make_image(64, 64, bits_stored=12)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    recoded = process(to_bytes(ds), CompressionOptions(), policy=policy)
    assert (recoded.state, recoded.target, recoded.rule) == ("done", "jpeg-ls", "RLE to JPEG-LS")
    plain = process(to_bytes(ds), CompressionOptions())
    assert (plain.state, plain.code) == ("skipped", "already_compressed")


def test_a_rule_keeps_syntaxes_its_readers_lack_out_of_auto() -> None:
    """A PACS that predates HTJ2K: auto's candidates are a rule's option, so one modality
    (or key prefix) is never written in a syntax its archive cannot decode."""
    from worker.codec.engine import process

    policy = parse_policy(
        '[[rule]]\nname = "to the old PACS"\nwhen = { Modality = "CR" }\ntarget = ["auto"]\n'
        'options = { auto_candidates = ["jpeg-ls", "j2k", "rle"] }\n\n'
        '[[rule]]\nname = "default"\ntarget = ["auto"]\n'
    )
    image = make_image(64, 64, bits_allocated=8)
    image.PixelData = bytes(range(64)) * 64  # a ramp: the wavelets' best case
    image.Modality = "CR"
    kept = process(to_bytes(image), CompressionOptions(), policy=policy)
    assert kept.rule == "to the old PACS" and kept.target in ("jpeg-ls", "j2k", "rle")
    assert "htj2k" not in " ".join(kept.notices) + kept.message
    image.Modality = "DX"
    free = process(to_bytes(image), CompressionOptions(), policy=policy)
    assert free.rule == "default" and "htj2k" in " ".join(free.notices)
