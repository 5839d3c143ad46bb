"""Content-addressed training snapshots of the event dataset.

A snapshot joins each listener's preference with its comparison, both clips and the listener's playbacks,
keeps the pairs MusicRL keeps (both clips listened to, by default), adds the quality ratings with their
clips, and splits both three ways by a hash of the prompt: ``train`` fits a reward model, ``validation``
chooses its best epoch, ``test`` is reported and chooses nothing. A prompt never lands in two splits, so
the reported figure is measured on prompts that neither training nor selection has seen.

With ``consolidate_codes`` (the default) the codes of every clip of the preference splits are fetched once
and packed into int16 shards under ``codes/`` (:mod:`musicrl.data.codes`), so training reads a few large
files instead of one per clip.

The output lives under ``<out>/<hash[:16]>/``, where the hash is a SHA-256 over the sorted rows, the
counts and the :class:`SnapshotConfig`. The packed codes need no hash of their own: they follow from the
rows (the clips' ids and codes URIs, in id order) and the config, and a clip's codes are written once, when
it is generated, and never change. The same events and settings give the same folder: a re-run finds its
``manifest.json`` (written last, so its presence means the folder is complete) and writes nothing, not
even a GET of the codes.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from musicrl.bus.subjects import kind_of
from musicrl.data import codes, feedback
from musicrl.data.dataset import EVENT_BATCH_ROWS, join_url, parquet_bytes, read_kind, scan_kind, write_durably
from musicrl.data.snapshot_config import SPLITS, SnapshotConfig
from musicrl.errors import InvalidRequest
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

HASH_PREFIX_CHARS = 16  # 64 bits of the digest name the folder: collisions are out of reach
# bump when the output changes, so old and new snapshots never share a hash; 2: three splits, packed codes
SNAPSHOT_FORMAT = 2
SOURCE_TYPES = (
    events_pb2.PreferenceSubmitted,
    events_pb2.ComparisonServed,
    events_pb2.GenerationCompleted,
    events_pb2.Playback,
    events_pb2.QualityRating,
)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
PREFERENCES_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("preference_event_id", "comparison_id", "user_id", "prompt", "choice")]
    + [pa.field("label", pa.float64())]
    + [pa.field(f"clip_{s}_id", pa.string()) for s in "ab"]
    + [pa.field(f"clip_{s}_{f}", pa.string()) for f in ("audio_uri", "codes_uri") for s in "ab"]
    + [pa.field(f"clip_{s}_policy_{f}", pa.string()) for s in "ab" for f in ("model_uri", "version")]
    + [pa.field("a_listened_ms", pa.int64()), pa.field("b_listened_ms", pa.int64())]
    + [pa.field("occurred_at", _TIMESTAMP), pa.field("split", pa.string())]
)
RATINGS_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("rating_event_id", "clip_id", "rater_id")]
    + [pa.field("score", pa.int32())]
    + [pa.field(n, pa.string()) for n in ("prompt", "audio_uri", "codes_uri", "policy_model_uri", "policy_version")]
    + [pa.field("occurred_at", _TIMESTAMP), pa.field("split", pa.string())]
)


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """Where a snapshot is and what went into it.

    Attributes:
        uri: The snapshot folder, ``<out>/<hash[:16]>``.
        digest: The full SHA-256 (hex) of the content and config.
        preferences: What happened to the preferences.
        ratings: What happened to the ratings.
        created: False when the folder already existed and nothing was written.
    """

    uri: str
    digest: str
    preferences: feedback.PreferenceCounts
    ratings: feedback.RatingCounts
    created: bool


def split_of(prompt: str, config: SnapshotConfig) -> str:
    """The split of a prompt, from the first 8 bytes of ``sha256(salt + prompt)`` read as a fraction u of 2^64.

    ``test`` when u < ``test_fraction``, ``validation`` when u < ``test_fraction + validation_fraction``,
    else ``train``.

    Args:
        prompt: The prompt text.
        config: Supplies ``split_salt``, ``validation_fraction`` and ``test_fraction``.

    Returns:
        ``train``, ``validation`` or ``test``; the same prompt always gets the same answer.
    """
    digest = hashlib.sha256((config.split_salt + prompt).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.test_fraction:
        return "test"
    return "validation" if u < config.test_fraction + config.validation_fraction else "train"


def read_events(dataset_url: str, *, batch_rows: int = EVENT_BATCH_ROWS) -> dict[str, pa.Table]:
    """Every kind a snapshot needs, read from the dataset batch by batch, by kind.

    Only the columns the joins read are decoded (:data:`~musicrl.data.feedback.EVENT_COLUMNS`), and
    playback reports, the most numerous kind, are reduced as they are read to one row per (comparison,
    clip, user) (:func:`~musicrl.data.feedback.reduce_playback`); the other kinds keep every row,
    duplicates included, for the joins to deduplicate.

    Args:
        dataset_url: Root of the event dataset.
        batch_rows: Most rows decoded at a time.

    Returns:
        Tables by kind.
    """
    tables = {}
    for message_type in tqdm(SOURCE_TYPES, desc="reading events", unit="kind"):
        kind = kind_of(message_type)
        columns = feedback.EVENT_COLUMNS[kind]
        if kind == "playback":
            tables[kind] = feedback.reduce_playback(
                scan_kind(dataset_url, message_type, columns, batch_rows=batch_rows)
            )
        else:
            tables[kind] = read_kind(dataset_url, message_type, columns, batch_rows=batch_rows)
        logger.debug("read %d %s rows", tables[kind].num_rows, kind)
    return tables


def _split(table: pa.Table, schema: pa.Schema, sort_key: str, config: SnapshotConfig) -> dict[str, pa.Table]:
    with_split = table.append_column("split", feedback.split_column(table["prompt"], lambda p: split_of(p, config)))
    ordered = with_split.select(schema.names).cast(schema).sort_by([(sort_key, "ascending")])
    ordered = ordered.combine_chunks()
    return {name: ordered.filter(pc.equal(ordered["split"], name)) for name in SPLITS}


def build_snapshot_tables(
    tables: dict[str, pa.Table], config: SnapshotConfig
) -> tuple[dict[str, pa.Table], feedback.PreferenceCounts, feedback.RatingCounts]:
    """The four output tables, sorted, and their counts.

    Args:
        tables: Event tables by kind, as :func:`read_events` returns them.
        config: What to keep and how to split.

    Returns:
        ``preferences_<split>`` and ``ratings_<split>`` tables for each of :data:`SPLITS`, with
        :data:`PREFERENCES_SCHEMA` / :data:`RATINGS_SCHEMA`, and the counts.
    """
    pairs, pair_counts = feedback.build_preferences(
        tables,
        require_listened=config.require_listened,
        min_listened_ms=config.min_listened_ms,
        min_listened_share=config.min_listened_share,
        keep_ties=config.ties == "keep",
        keep_none=config.none == "keep",
    )
    ratings, rating_counts = feedback.build_ratings(tables)
    out = {}
    for name, table, schema, key in (
        ("preferences", pairs, PREFERENCES_SCHEMA, "preference_event_id"),
        ("ratings", ratings, RATINGS_SCHEMA, "rating_event_id"),
    ):
        for split, part in _split(table, schema, key, config).items():
            out[f"{name}_{split}"] = part
    for split in SPLITS:
        setattr(pair_counts, f"kept_{split}", out[f"preferences_{split}"].num_rows)
        setattr(rating_counts, f"kept_{split}", out[f"ratings_{split}"].num_rows)
    return out, pair_counts, rating_counts


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"no canonical JSON form for {type(value).__name__}")


def _canonical_lines(tables: dict[str, pa.Table]) -> Iterator[bytes]:
    for name in sorted(tables):
        yield f"table {name} {tables[name].schema.names}\n".encode()
        for batch in tables[name].to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                yield json.dumps(list(row.values()), default=_json_value, ensure_ascii=False).encode() + b"\n"


def content_digest(tables: dict[str, pa.Table], counts: dict[str, Any], config: SnapshotConfig) -> str:
    """SHA-256 (hex) over the snapshot format, the config, the counts and every row of every table in order.

    Args:
        tables: The sorted output tables by name.
        counts: The manifest's counts.
        config: The snapshot settings.

    Returns:
        The hex digest; equal inputs give equal digests.
    """
    digest = hashlib.sha256()
    header = {"format": SNAPSHOT_FORMAT, "config": dataclasses.asdict(config), "counts": counts}
    digest.update(json.dumps(header, sort_keys=True).encode() + b"\n")
    for line in _canonical_lines(tables):
        digest.update(line)
    return digest.hexdigest()


def create_snapshot(dataset_url: str, out_url: str, config: SnapshotConfig) -> SnapshotResult:
    """Build the snapshot of ``dataset_url`` under ``out_url``, or find the identical one already there.

    Args:
        dataset_url: Root of the event dataset (local path or fsspec URL).
        out_url: Where snapshot folders go.
        config: What to keep and how to split.

    Returns:
        The snapshot's URI, digest and counts.

    Raises:
        InvalidRequest: The dataset holds no preferences, or (with ``consolidate_codes``) a kept clip's codes
            file is missing or holds no valid codes.
    """
    tables = read_events(dataset_url)
    if tables["preference_submitted"].num_rows == 0:
        raise InvalidRequest(f"no preferences in {dataset_url}")
    out, pair_counts, rating_counts = build_snapshot_tables(tables, config)
    counts = {"preferences": dataclasses.asdict(pair_counts), "ratings": dataclasses.asdict(rating_counts)}
    digest = content_digest(out, counts, config)
    uri = join_url(out_url, digest[:HASH_PREFIX_CHARS])
    result = SnapshotResult(uri, digest, pair_counts, rating_counts, created=False)
    fs, manifest_path = fsspec.core.url_to_fs(join_url(uri, "manifest.json"))
    if fs.exists(manifest_path):
        logger.info("snapshot %s already exists; nothing written", uri)
        return result
    for name, table in out.items():
        write_durably(join_url(uri, f"{name}.parquet"), parquet_bytes(table))
    files = sorted(f"{name}.parquet" for name in out)
    packed = None
    if config.consolidate_codes:
        clips = codes.distinct_clips([out[f"preferences_{split}"] for split in SPLITS])
        packed = codes.pack_codes(clips, uri, shard_bytes=config.codes_shard_bytes)
        files += packed.pop("files")
    manifest = {
        "hash": digest,
        "uri": uri,
        "format": SNAPSHOT_FORMAT,
        "config": dataclasses.asdict(config),
        "counts": counts,
        "files": files,
        "codes": packed,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "source_dataset_url": dataset_url,
    }
    write_durably(join_url(uri, "manifest.json"), json.dumps(manifest, indent=2).encode() + b"\n")  # last: commit
    logger.info("wrote snapshot %s", uri)
    return dataclasses.replace(result, created=True)
