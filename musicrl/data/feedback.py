"""Join recorded feedback events into training rows: preference pairs and quality ratings.

Pure Arrow (``pyarrow.compute`` joins and group-bys) on the flat event tables of
``musicrl.data.event_tables``, so a snapshot of a few million events needs no engine beyond pyarrow.
Row order out of these functions is not defined (Arrow joins run in parallel); the snapshot sorts.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from musicrl.data.event_tables import arrow_schema
from musicrl.v1 import events_pb2


logger = logging.getLogger(__name__)

# The columns of each kind that the joins below read: a snapshot decodes only these, not whole events.
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "preference_submitted": ("event_id", "occurred_at", "comparison_id", "user_id", "choice"),
    "comparison_served": (
        "event_id",
        "occurred_at",
        "comparison_id",
        "prompt",
        "clip_a_clip_id",
        "clip_b_clip_id",
        *(f"clip_{s}_policy_{f}" for s in "ab" for f in ("model_uri", "version")),
    ),
    "generation_completed": (
        "event_id",
        "occurred_at",
        "clip_id",
        "prompt",
        "duration_s",
        "audio_uri",
        "codes_uri",
        "policy_model_uri",
        "policy_version",
    ),
    "playback": ("comparison_id", "clip_id", "user_id", "listened_ms", "completed"),
    "quality_rating": ("event_id", "occurred_at", "clip_id", "rater_id", "score"),
}
PLAYBACK_KEYS = ["comparison_id", "clip_id", "user_id"]
PLAYBACK_COMPACT_ROWS = 1_000_000  # reduced playback rows pending before they are reduced together again
CHOICES = ("a", "b", "tie", "none")
LABELS = {"a": 1.0, "b": 0.0, "tie": 0.5}  # P(A preferred); "none" (no trophy) has no label
MIN_SCORE, MAX_SCORE = 1, 5  # QualityRating.score: 1 (bad) to 5 (excellent); 0 is unset


@dataclass(slots=True)
class PreferenceCounts:
    """What happened to the recorded preferences. Each dropped preference is counted once, under the first
    reason below that applies, checked in this order.

    Attributes:
        read: Rows read, duplicates included.
        duplicates_dropped: Copies of an event already seen (same ``event_id``).
        superseded: Earlier answers of a user who answered the same comparison again (the latest counts).
        unknown_comparison: Preferences whose ``comparison_served`` was never recorded.
        unknown_clip: Preferences whose clip A or B has no ``generation_completed``.
        invalid_choice: Choice unspecified or unknown to this reader.
        not_listened: The user did not listen to both clips (only with ``require_listened``).
        ties_dropped: Ties, when ``ties`` is ``drop``.
        none_dropped: Neither clip chosen, when ``none`` is ``drop``.
        kept_train: Rows in the train split.
        kept_validation: Rows in the validation split.
        kept_test: Rows in the test split.
    """

    read: int = 0
    duplicates_dropped: int = 0
    superseded: int = 0
    unknown_comparison: int = 0
    unknown_clip: int = 0
    invalid_choice: int = 0
    not_listened: int = 0
    ties_dropped: int = 0
    none_dropped: int = 0
    kept_train: int = 0
    kept_validation: int = 0
    kept_test: int = 0


@dataclass(slots=True)
class RatingCounts:
    """What happened to the recorded quality ratings (each dropped rating counted once, in this order).

    Attributes:
        read: Rows read, duplicates included.
        duplicates_dropped: Copies of an event already seen (same ``event_id``).
        unknown_clip: Ratings of a clip with no ``generation_completed``.
        invalid_score: Scores outside 1-5.
        kept_train: Rows in the train split.
        kept_validation: Rows in the validation split.
        kept_test: Rows in the test split.
    """

    read: int = 0
    duplicates_dropped: int = 0
    unknown_clip: int = 0
    invalid_score: int = 0
    kept_train: int = 0
    kept_validation: int = 0
    kept_test: int = 0


def drop_duplicates(table: pa.Table, key: str = "event_id") -> pa.Table:
    """Keep the first row of each ``key``, in the original order.

    Args:
        table: Any table with a ``key`` column.
        key: The column that identifies a row.

    Returns:
        The table without repeated keys.
    """
    return _pick_per(table, [key], pick="min")


def _pick_per(table: pa.Table, keys: Sequence[str], *, pick: str) -> pa.Table:
    """One row per distinct ``keys``: the first (``min``) or last (``max``) in the table's current order."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    chosen = indexed.group_by(list(keys), use_threads=False).aggregate([("_row", pick)])[f"_row_{pick}"]
    return table.take(pc.take(chosen, pc.sort_indices(chosen)))  # the chosen rows, in table order


def _in_time_order(table: pa.Table) -> pa.Table:
    return table.sort_by([("occurred_at", "ascending"), ("event_id", "ascending")])


def _drop_where(table: pa.Table, mask: pa.ChunkedArray | pa.Array) -> tuple[pa.Table, int]:
    """Remove the rows where ``mask`` is true (null counts as false); return the rest and how many went."""
    drop = pc.fill_null(mask, False)
    kept = table.filter(pc.invert(drop))
    return kept, table.num_rows - kept.num_rows


def _lookup(
    left: pa.Table, right: pa.Table, left_keys: Sequence[str], right_keys: Sequence[str], found: str
) -> pa.Table:
    """Left join ``right`` (unique on ``right_keys``) and add a boolean ``found`` column (null = no match)."""
    marked = right.append_column(found, pa.array(np.ones(right.num_rows, dtype=bool)))
    return left.join(marked, keys=list(left_keys), right_keys=list(right_keys), join_type="left outer")


def _first_per(table: pa.Table, key: str) -> pa.Table:
    """The earliest event for each ``key`` (the one that first announced the comparison or clip)."""
    return _pick_per(_in_time_order(drop_duplicates(table)), [key], pick="min")


def reduce_playback(batches: Iterable[pa.RecordBatch | pa.Table]) -> pa.Table:
    """Per (comparison, clip, user): the longest report (``listened_ms``) and whether any reached the end.

    Playback is the most numerous kind (a page reports every few seconds of listening), and the listening
    rule reads no more than these two figures: a report counts when it reached the end or lasted long
    enough, so some report counts exactly when one reached the end or the longest lasted long enough.
    Both are idempotent, so duplicated events need no dropping, and reducing each batch as it is read,
    then the reductions, gives what reducing every report at once would.

    Args:
        batches: Playback rows with at least ``comparison_id``, ``clip_id``, ``user_id``, ``listened_ms``
            and ``completed``.

    Returns:
        One row per (comparison, clip, user) with those five columns.
    """
    parts: list[pa.Table] = []
    pending = compacted = 0
    for batch in batches:
        parts.append(_reduce_reports(pa.table(batch)))
        pending += parts[-1].num_rows
        if pending > 2 * compacted + PLAYBACK_COMPACT_ROWS:  # amortised: what is pending at least halves
            parts = [_reduce_reports(pa.concat_tables(parts))]
            pending = compacted = parts[0].num_rows
    if not parts:
        parts = [arrow_schema(events_pb2.Playback).empty_table()]
    return _reduce_reports(pa.concat_tables(parts))


def _reduce_reports(playback: pa.Table) -> pa.Table:
    grouped = playback.group_by(PLAYBACK_KEYS, use_threads=False).aggregate(
        [("listened_ms", "max"), ("completed", "any")]
    )
    return (
        grouped.select(["listened_ms_max", "completed_any", *PLAYBACK_KEYS])
        .rename_columns(["listened_ms", "completed", *PLAYBACK_KEYS])
        .select([*PLAYBACK_KEYS, "listened_ms", "completed"])
    )


def _listening(playback: pa.Table, clips: pa.Table, min_listened_ms: int, min_listened_share: float) -> pa.Table:
    """Per (comparison, clip, user): the longest playback report and whether any counts as listened.

    ``listened_ms`` is already summed over seeks and replays by the client, so reports are not added up
    (a client that reports cumulative totals would be double counted); the longest is the best figure.
    A report counts when it reached the end, or lasted ``min_listened_share`` of the clip and
    ``min_listened_ms`` (and more than 0 ms); a clip with no known length needs only the latter.
    ``playback`` may hold raw reports or :func:`reduce_playback`'s rows: the result is the same.
    """
    playback = reduce_playback([playback])
    lengths = clips.select(["clip_id", "duration_s"]).rename_columns(["clip_id", "_duration_s"])
    playback = playback.join(lengths, keys="clip_id", join_type="left outer", use_threads=False)
    # whole milliseconds, rounded down: durations are float32 in events, and the gateway tells listeners the
    # share rounded up, so a listener who played what they were told always counts
    share_ms = pc.floor(pc.multiply(pc.fill_null(playback["_duration_s"], 0.0), min_listened_share * 1000.0))
    threshold = pc.max_element_wise(share_ms, pa.scalar(float(max(min_listened_ms, 1))))
    listened = pc.or_(
        playback["completed"], pc.greater_equal(pc.cast(playback["listened_ms"], pa.float64()), threshold)
    )
    playback = playback.append_column("_listened", listened)
    grouped = playback.group_by(["comparison_id", "clip_id", "user_id"], use_threads=False).aggregate(
        [("listened_ms", "max"), ("_listened", "any")]
    )
    return grouped.rename_columns(["comparison_id", "clip_id", "user_id", "listened_ms", "listened"])


def _with_clip(pairs: pa.Table, clips: pa.Table, side: str) -> pa.Table:
    side_clips = clips.select(["clip_id", "audio_uri", "codes_uri"]).rename_columns(
        [f"clip_{side}_id", f"clip_{side}_audio_uri", f"clip_{side}_codes_uri"]
    )
    return _lookup(pairs, side_clips, [f"clip_{side}_id"], [f"clip_{side}_id"], f"_clip_{side}")


def _with_listening(pairs: pa.Table, listening: pa.Table, side: str) -> pa.Table:
    renamed = listening.rename_columns(["comparison_id", f"clip_{side}_id", "user_id", f"{side}_ms", f"_{side}_ok"])
    keys = ["comparison_id", f"clip_{side}_id", "user_id"]
    joined = _lookup(pairs, renamed, keys, keys, f"_{side}_seen")
    listened_ms = pc.cast(pc.fill_null(joined[f"{side}_ms"], 0), pa.int64())
    return joined.drop_columns([f"{side}_ms", f"_{side}_seen"]).append_column(f"{side}_listened_ms", listened_ms)


def _comparisons(comparison_served: pa.Table) -> pa.Table:
    columns = ["comparison_id", "prompt", "clip_a_clip_id", "clip_b_clip_id"] + [
        f"clip_{s}_policy_{f}" for s in "ab" for f in ("model_uri", "version")
    ]
    selected = _first_per(comparison_served, "comparison_id").select(columns)
    return selected.rename_columns([c.replace("_clip_id", "_id") for c in columns])


def _latest_answers(preference_submitted: pa.Table, counts: PreferenceCounts) -> pa.Table:
    prefs = drop_duplicates(preference_submitted)
    counts.duplicates_dropped = counts.read - prefs.num_rows
    latest = _pick_per(_in_time_order(prefs), ["comparison_id", "user_id"], pick="max")
    counts.superseded = prefs.num_rows - latest.num_rows
    columns = ["event_id", "comparison_id", "user_id", "choice", "occurred_at"]
    return latest.select(columns).rename_columns(["preference_event_id", *columns[1:]])


def build_preferences(
    tables: dict[str, pa.Table],
    *,
    require_listened: bool,
    min_listened_ms: int,
    min_listened_share: float,
    keep_ties: bool,
    keep_none: bool,
) -> tuple[pa.Table, PreferenceCounts]:
    """Join each user's latest preference with its comparison, both clips and that user's playbacks.

    Args:
        tables: Event tables by kind: ``preference_submitted``, ``comparison_served``,
            ``generation_completed`` and ``playback`` (duplicates allowed).
        require_listened: Drop pairs unless the user listened to both clips (MusicRL's filter).
        min_listened_ms: A playback of at least this many ms (and more than 0) counts as listening;
            a completed playback always does.
        min_listened_share: Such a playback must also last this share of the clip's ``duration_s``.
        keep_ties: Keep ``tie`` answers (label 0.5).
        keep_none: Keep ``none`` answers (no trophy; label null).

    Returns:
        Unsplit, unsorted pair rows (the columns of the snapshot's preferences table except ``split``,
        plus ``label``), and the counts with ``kept_*`` still zero.
    """
    counts = PreferenceCounts(read=tables["preference_submitted"].num_rows)
    pairs = _latest_answers(tables["preference_submitted"], counts)
    pairs = _lookup(pairs, _comparisons(tables["comparison_served"]), ["comparison_id"], ["comparison_id"], "_cmp")
    pairs, counts.unknown_comparison = _drop_where(pairs, pc.is_null(pairs["_cmp"]))
    clips = _first_per(tables["generation_completed"], "clip_id")
    pairs = _with_clip(_with_clip(pairs, clips, "a"), clips, "b")
    pairs, counts.unknown_clip = _drop_where(pairs, pc.or_(pc.is_null(pairs["_clip_a"]), pc.is_null(pairs["_clip_b"])))
    pairs, counts.invalid_choice = _drop_where(pairs, pc.invert(pc.is_in(pairs["choice"], pa.array(CHOICES))))
    listening = _listening(tables["playback"], clips, min_listened_ms, min_listened_share)
    pairs = _with_listening(_with_listening(pairs, listening, "a"), listening, "b")
    if require_listened:
        both = pc.and_(pc.fill_null(pairs["_a_ok"], False), pc.fill_null(pairs["_b_ok"], False))
        pairs, counts.not_listened = _drop_where(pairs, pc.invert(both))
    if not keep_ties:
        pairs, counts.ties_dropped = _drop_where(pairs, pc.equal(pairs["choice"], "tie"))
    if not keep_none:
        pairs, counts.none_dropped = _drop_where(pairs, pc.equal(pairs["choice"], "none"))
    labels = pa.array([LABELS.get(c) for c in pairs["choice"].to_pylist()], pa.float64())
    pairs = pairs.append_column("label", labels)
    return pairs.drop_columns([c for c in pairs.column_names if c.startswith("_")]), counts


def build_ratings(tables: dict[str, pa.Table]) -> tuple[pa.Table, RatingCounts]:
    """Join each quality rating with its clip's ``generation_completed``.

    Args:
        tables: Event tables by kind: ``quality_rating`` and ``generation_completed``.

    Returns:
        Unsplit, unsorted rating rows and the counts with ``kept_*`` still zero.
    """
    counts = RatingCounts(read=tables["quality_rating"].num_rows)
    ratings = drop_duplicates(tables["quality_rating"])
    counts.duplicates_dropped = counts.read - ratings.num_rows
    columns = ["event_id", "clip_id", "rater_id", "score", "occurred_at"]
    ratings = ratings.select(columns).rename_columns(["rating_event_id", *columns[1:]])
    clip_columns = ["clip_id", "prompt", "audio_uri", "codes_uri", "policy_model_uri", "policy_version"]
    clips = _first_per(tables["generation_completed"], "clip_id").select(clip_columns)
    ratings = _lookup(ratings, clips, ["clip_id"], ["clip_id"], "_clip")
    ratings, counts.unknown_clip = _drop_where(ratings, pc.is_null(ratings["_clip"]))
    in_range = pc.and_(pc.greater_equal(ratings["score"], MIN_SCORE), pc.less_equal(ratings["score"], MAX_SCORE))
    ratings, counts.invalid_score = _drop_where(ratings, pc.invert(in_range))
    return ratings.drop_columns(["_clip"]), counts


def split_column(prompts: pa.ChunkedArray, split_of: Callable[[str], str]) -> pa.Array:
    """``split_of`` applied once per distinct prompt, as a string column aligned with ``prompts``."""
    values = prompts.to_pylist()
    by_prompt = {p: split_of(p) for p in set(values)}
    return pa.array([by_prompt[p] for p in values], pa.string())
