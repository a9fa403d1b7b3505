"""Read a W&B offline run (``<run_dir>/wandb/offline-run-*/run-*.wandb``) without a server.

An offline run is a transaction log in W&B's LevelDB-style record format: a 7-byte header
(":W&B", magic 0xBEE1, version), then 32 KiB blocks of records, each with a 7-byte header
(crc32c, little-endian length, type FULL/FIRST/MIDDLE/LAST) whose payloads, joined, are
serialised ``wandb.proto.wandb_internal_pb2.Record`` messages. This reader lets the tests
(and anyone without a W&B server) check what a run would upload: its group, name, tags,
config, summary, history and metric definitions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: str | Path) -> Iterator[bytes]:
    """Yield the payload of every complete record of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (bad header {data[:4]!r})")
    pos, parts = FILE_HEADER, []
    while pos + RECORD_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < RECORD_HEADER:  # block trailer padding
            pos += room
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if length == 0 and kind == 0:  # zero padding up to the end of the block
            pos += room
            continue
        payload = data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        pos += RECORD_HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            parts = [payload]
        elif kind == MIDDLE:
            parts.append(payload)
        elif kind == LAST:
            parts.append(payload)
            yield b"".join(parts)
            parts = []


def _decode(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except json.JSONDecodeError:
        return value_json


def _set(summary: dict[str, Any], path: list[str], item: Any) -> None:
    """A summary update at its nested key (``["test/samples", "path"]`` →
    ``summary["test/samples"]["path"]``), as the W&B API returns a run's summary."""
    for part in path[:-1]:
        if not isinstance(summary.get(part), dict):
            summary[part] = {}
        summary = summary[part]
    summary[path[-1]] = _decode(item.value_json)


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """Run id, name, group, job type, tags, config, summary, history and metric definitions
    of one offline run.

    ``path`` is the ``run-*.wandb`` file or the ``offline-run-*`` directory holding it.
    Nested config keys come back as W&B stores them (top-level keys with dict values).
    ``metrics``: {name or glob: {"step_metric", "summary": ["last", "max", ...]}} from
    ``define_metric``. Logged tables and images are summary entries with a ``path``
    relative to ``<dir>/files`` (``dir``: the ``offline-run-*`` directory).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        path = next(path.glob("*.wandb"))
    out: dict[str, Any] = {
        "dir": str(path.parent),
        "config": {},
        "summary": {},
        "history": [],
        "metrics": {},
    }
    for payload in iter_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(
                run_id=run.run_id,
                name=run.display_name,
                group=run.run_group,
                job_type=run.job_type,
                project=run.project,
                tags=list(run.tags),
            )
            out["config"].update({i.key: _decode(i.value_json) for i in run.config.update})
        elif kind == "config":
            out["config"].update({i.key: _decode(i.value_json) for i in record.config.update})
        elif kind == "summary":
            for item in record.summary.update:
                _set(out["summary"], [item.key] if item.key else list(item.nested_key), item)
        elif kind == "metric":  # a define_metric: its step axis and summaries
            metric = record.metric
            summary = [f.name for f, on in metric.summary.ListFields() if on is True]
            out["metrics"][metric.name or metric.glob_name] = {
                "step_metric": metric.step_metric or None,
                "summary": sorted(summary),
            }
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = _decode(item.value_json)
            out["history"].append(row)
    return out
