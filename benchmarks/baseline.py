"""The baseline a user would pick instead of dcmpress: the migration script an engineer
writes without it, run on the same objects against the same servers.

Per object, one after the other, each step a new process as a shell loop runs it:
download the source (``aws s3 cp``; without the AWS CLI, a one-shot ``python -c``
boto3 script), compress it (DCMTK's ``dcmcjpls`` or ``dcmcrle``, GDCM's
``gdcmconv --j2k``), upload the output. Nothing is verified. Measured: wall seconds,
the CPU seconds of those processes (``RUSAGE_CHILDREN``, user + system) and of the S3
server meanwhile (``/proc``). :func:`comparison` sets them beside dcmpress's CPU per
object in the stack run; ``benchmarks.end_to_end`` runs both.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.harness.children import find_tool
from benchmarks.harness.commands import PEERS
from dcmpress.stack.services import SeaweedS3
from worker.procfs import tree_cpu_seconds

# ``aws s3 cp SOURCE DEST`` in boto3, for a machine without the AWS CLI: one new process
# per call, as the CLI would be
_BOTO3_COPY = r"""
import sys, boto3
from botocore.config import Config
endpoint, source, dest = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
if source.startswith("s3://"):
    bucket, _, key = source[5:].partition("/")
    s3.download_file(bucket, key, dest)
else:
    bucket, _, key = dest[5:].partition("/")
    s3.upload_file(source, bucket, key)
"""

# The same migration as one Python process: one boto3 client, a new compressor process
# per object. Prints the CPU seconds of its copies (after its imports and client) and of
# the compressor processes, as JSON.
_BOTO3_LOOP = r"""
import json, resource, subprocess, sys, time
import boto3
from botocore.config import Config
endpoint, bucket, dest_bucket, prefix, work, compressor, *keys = sys.argv[1:]
compressor = json.loads(compressor)
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
source, output = work + "/loop.dcm", work + "/loop-compressed.dcm"
spent = {"download": 0.0, "upload": 0.0}
for key in keys:
    started = time.process_time()
    s3.download_file(bucket, key, source)
    spent["download"] += time.process_time() - started
    subprocess.run([*compressor, source, output], check=True, capture_output=True)
    started = time.process_time()
    s3.upload_file(output, dest_bucket, prefix + key)
    spent["upload"] += time.process_time() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
spent["compress"] = usage.ru_utime + usage.ru_stime
print(json.dumps(spent))
"""

STEPS = ("download", "compress", "upload")
STYLES = {
    "cli": "a new process per step",
    "loop": "one Python process with one boto3 client, a new compressor process per object",
}


@dataclass(frozen=True)
class Copier:
    """``aws s3 cp SOURCE DEST`` or its boto3 stand-in: one object, one new process."""

    label: str
    before: tuple[str, ...]  # the arguments before SOURCE DEST
    after: tuple[str, ...] = ()  # and after them

    def argv(self, source: str, dest: str) -> list[str]:
        """The command line copying ``source`` to ``dest`` (``s3://bucket/key`` or a path)."""
        return [*self.before, source, dest, *self.after]


@dataclass(frozen=True)
class Baseline:
    """What the scripted migration took, all objects together."""

    copier: str
    compressor: str
    objects: int
    seconds: float  # wall
    steps_cpu: dict[str, float]  # CPU seconds of each step's processes (STEPS)
    s3_server_cpu: float  # CPU seconds of the S3 server while the script ran
    bytes_out: int
    style: str = "cli"  # STYLES

    @property
    def tools_cpu(self) -> float:
        """CPU seconds of every process the script started."""
        return sum(self.steps_cpu.values())


@dataclass(frozen=True)
class Skipped:
    """Why the baseline did not run."""

    reason: str


def find_aws_cli() -> str | None:
    """The ``aws`` executable, or None. A pyenv shim is resolved to the program it
    runs: the shim's own start-up (~60 ms of CPU) is not the AWS CLI's."""
    found = shutil.which("aws")
    pyenv = shutil.which("pyenv")
    if found and pyenv and Path(found).parent.name == "shims":
        resolved = subprocess.run(
            [pyenv, "which", "aws"], capture_output=True, text=True, check=False
        ).stdout.strip()
        return resolved or found
    return found


def find_copier(endpoint: str, env: dict[str, str]) -> Copier:
    """The AWS CLI if it is on PATH, else the boto3 stand-in."""
    aws = find_aws_cli()
    if aws is None:
        return Copier(
            "boto3 (python -c, a new process per copy: no aws on PATH)",
            (sys.executable, "-c", _BOTO3_COPY, endpoint),
        )
    version = subprocess.run(
        [aws, "--version"], capture_output=True, text=True, env=env, check=False
    )
    words = (version.stdout or version.stderr).split()
    return Copier(
        f"aws s3 cp ({words[0] if words else 'version unknown'})",
        (aws, "s3", "cp"),
        ("--endpoint-url", endpoint, "--only-show-errors"),
    )


def find_compressor(target: str) -> list[str] | Skipped:
    """The command line (without its two files) a script would compress with:
    DCMTK's for the target if it has one, else GDCM's; or why there is none."""
    if target not in PEERS:
        return Skipped(f"neither DCMTK nor gdcmconv writes {target}")
    peer = PEERS[target][0]  # DCMTK's first where it has one
    executable = find_tool(peer.program)
    if executable is None:
        package = "dcmtk" if peer.toolkit == "DCMTK" else "libgdcm-tools"
        return Skipped(f"{peer.program} not on PATH (Debian package {package})")
    return [executable, *peer.arguments]


def script_env(s3: SeaweedS3) -> dict[str, str]:
    """The script's environment: the local server's credentials and region, and nothing
    that could send a request elsewhere (no proxy, no instance metadata, no user AWS
    configuration)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "DCMPRESS_")) and not name.lower().endswith("_proxy")
    }
    env.update({name: value for name, value in s3.env().items() if name.startswith("AWS_")})
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_step(argv: Sequence[str], env: dict[str, str]) -> float:
    """Run one step as its own process; the CPU seconds (user + system) it used."""
    before = _children_cpu()
    done = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripted baseline: {' '.join(argv)} exited with {done.returncode}: "
            f"{(done.stderr or done.stdout)[-2000:]}"
        )
    return _children_cpu() - before


def run_baseline(
    s3: SeaweedS3,
    bucket: str,
    keys: Sequence[str],
    dest_bucket: str,
    dest_prefix: str,
    target: str,
    work: Path,
    style: str = "cli",
) -> Baseline | Skipped:
    """Migrate ``keys`` of ``bucket`` to ``dest_bucket/dest_prefix`` as a script would,
    one object after the other: download, compress, upload. ``cli``: each step a new
    process (``aws s3 cp``, the compressor, ``aws s3 cp``); ``loop``: one Python process
    with one boto3 client, the compressor a new process per object (its start-up and
    imports not counted). Every output must arrive; a failing step raises RuntimeError."""
    endpoint = s3.endpoint_url
    if urlsplit(endpoint).hostname != "127.0.0.1":
        raise ValueError(f"the baseline only talks to a local S3 server, not {endpoint}")
    compressor = find_compressor(target)
    if isinstance(compressor, Skipped):
        return compressor
    env = script_env(s3)
    work.mkdir(parents=True, exist_ok=True)
    steps_cpu = dict.fromkeys(STEPS, 0.0)
    server_before = tree_cpu_seconds(s3.pid, reaped=True)
    started = time.perf_counter()
    if style == "loop":
        copier = "boto3 in one Python process"
        argv = [sys.executable, "-c", _BOTO3_LOOP, endpoint, bucket, dest_bucket, dest_prefix,
                str(work), json.dumps(compressor), *keys]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scripted baseline (loop): {done.stderr[-2000:]}")
        steps_cpu.update(json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        found = find_copier(endpoint, env)
        copier = found.label
        source, output = work / "x.dcm", work / "x-compressed.dcm"
        for key in keys:
            steps_cpu["download"] += _run_step(found.argv(f"s3://{bucket}/{key}", str(source)), env)
            steps_cpu["compress"] += _run_step([*compressor, str(source), str(output)], env)
            steps_cpu["upload"] += _run_step(
                found.argv(str(output), f"s3://{dest_bucket}/{dest_prefix}{key}"), env
            )
    seconds = time.perf_counter() - started
    server_cpu = tree_cpu_seconds(s3.pid, reaped=True) - server_before
    listing = s3.client().list_objects_v2(Bucket=dest_bucket, Prefix=dest_prefix)
    written = listing.get("Contents", [])
    if len(written) != len(keys):
        raise RuntimeError(f"scripted baseline: {len(written)} outputs for {len(keys)} objects")
    return Baseline(
        copier=copier,
        compressor=Path(compressor[0]).name + "".join(f" {a}" for a in compressor[1:]),
        objects=len(keys),
        seconds=seconds,
        steps_cpu=steps_cpu,
        s3_server_cpu=server_cpu,
        bytes_out=sum(item["Size"] for item in written),
        style=style,
    )


def comparison(
    result: Baseline | Skipped, stack_cpu: dict[str, float], stack_objects: int
) -> dict[str, Any]:
    """JSON-ready: the baseline's CPU ms per object by step and the S3 server's during
    it, dcmpress's from the stack run (``stack_cpu``: CPU seconds by party, over its
    ``stack_objects``) beside them, and dcmpress / baseline CPU per object (< 1.00:
    dcmpress uses less): client side (worker / the script's processes), with the S3
    server, and with both servers (dcmpress needs Redis, the script does not)."""
    if isinstance(result, Skipped):
        return {"skipped": result.reason}

    def per_object(seconds: float) -> float:
        return seconds / result.objects * 1000

    script = {name: per_object(seconds) for name, seconds in result.steps_cpu.items()}
    script["tools"] = per_object(result.tools_cpu)
    script["s3 server"] = per_object(result.s3_server_cpu)
    dcmpress = {
        name: stack_cpu[name] / stack_objects * 1000 for name in ("worker", "s3 server", "redis")
    }
    client = script["tools"]
    with_server = client + script["s3 server"]
    ours_with_server = dcmpress["worker"] + dcmpress["s3 server"]
    return {
        "style": result.style,
        "copier": result.copier,
        "compressor": result.compressor,
        "objects": result.objects,
        "seconds": round(result.seconds, 3),
        "objects_per_s": round(result.objects / result.seconds, 2),
        "bytes_out": result.bytes_out,
        "cpu_ms_per_object": {name: round(ms, 2) for name, ms in script.items()},
        "dcmpress_cpu_ms_per_object": {name: round(ms, 2) for name, ms in dcmpress.items()},
        "dcmpress_over_baseline_cpu": {
            "client side": round(dcmpress["worker"] / client, 3),
            "with the S3 server": round(ours_with_server / with_server, 3),
            "with both servers": round(sum(dcmpress.values()) / with_server, 3),
        },
    }


def describe(compared: dict[str, Any]) -> str:
    """Lines for the terminal: the script, its CPU per object, and the ratios."""
    if "skipped" in compared:
        return f"scripted migration: skipped, {compared['skipped']}"
    script, ours = compared["cpu_ms_per_object"], compared["dcmpress_cpu_ms_per_object"]
    ratios = compared["dcmpress_over_baseline_cpu"]
    return "\n".join(
        [
            f"scripted migration ({compared['copier']}, {compared['compressor']}, upload the "
            f"same way; {STYLES[compared.get('style', 'cli')]}, one object at a time, no "
            "verification): "
            f"{compared['objects']} objects in {compared['seconds']:.1f} s "
            f"({compared['objects_per_s']:.2f} objects/s)",
            "  its CPU ms per object: "
            + ", ".join(f"{step} {script[step]:.1f}" for step in STEPS)
            + f" = {script['tools']:.1f}; S3 server meanwhile {script['s3 server']:.1f}",
            f"  dcmpress's in the stack: worker {ours['worker']:.1f}, "
            f"S3 server {ours['s3 server']:.1f}, Redis {ours['redis']:.1f}",
            "  dcmpress / script CPU per object (< 1.00: dcmpress uses less): "
            + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()),
        ]
    )
