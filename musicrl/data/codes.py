"""A snapshot's clip codes packed into a few int16 shards: fetched once at snapshot time, streamed to train.

The clip store keeps one ``.codes.npy`` (int64 [K, T]) per clip. Reading those per training run is one GET
per clip and eight bytes per code: at the paper's 300k pairs, 600k sequential GETs and ~19 GB of RAM. A
snapshot instead fetches each distinct clip of its preference splits once, with a bounded pool of threads,
checks it, and appends it to flat int16 shards::

    <snapshot>/codes/codes-00000.npy   int16 [N_0], clips back to back, each its [K, T] grid in C order
    <snapshot>/codes/index.parquet     clip_id, codes_uri, shard, offset, num_codebooks, frames, min_code, max_code

int16 holds every EnCodec codebook (MusicGen's have 2048 entries, int16 reaches 32767), a quarter of the
int64 bytes; a value that does not fit is refused with a sentence rather than wrapped. Clips are packed in
clip-id order, so the same clips give the same bytes: the snapshot stays content-addressed. A trainer opens
the index (a few numbers per clip) and reads each clip's bytes from its shard when a batch asks for it, so
the codes it holds in memory are the batch it is reading; :class:`PackedCodes` pickles without its open
files, so every DataLoader worker opens the shards itself.
"""

import collections
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from musicrl.data.dataset import join_url, parquet_bytes, parquet_file, write_durably
from musicrl.errors import InvalidRequest


logger = logging.getLogger(__name__)

CODES_DIR = "codes"
INDEX_FILE = f"{CODES_DIR}/index.parquet"
CODES_DTYPE = np.dtype(np.int16)
# 64 MiB: ~110 shards for the paper's 600k clips of 30 s (one GET each), and a snapshot holds ~3 while writing one
DEFAULT_SHARD_BYTES = 64 * 2**20
FETCH_THREADS = 16  # GETs in flight: object-store reads are latency-bound, and 16 × 50 KB files is nothing to hold
INDEX_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string()),
        pa.field("codes_uri", pa.string()),
        pa.field("shard", pa.int32()),
        pa.field("offset", pa.int64()),  # in codes, not bytes, from the start of the shard
        pa.field("num_codebooks", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("min_code", pa.int32()),
        pa.field("max_code", pa.int32()),
    ]
)


def shard_name(shard: int) -> str:
    """``codes/codes-<shard:05d>.npy``, relative to the snapshot folder."""
    return f"{CODES_DIR}/codes-{shard:05d}.npy"


def read_codes_file(uri: str) -> np.ndarray:
    """One clip's codes from the clip store, checked to be a non-empty integer grid [K, T] that fits int16.

    Args:
        uri: The clip's ``codes_uri``.

    Returns:
        The grid as stored (any integer dtype).

    Raises:
        InvalidRequest: The file is missing or unreadable, not a ``.npy``, not an integer [K, T] grid, or
            holds a value outside int16.
    """
    try:
        with fsspec.open(uri, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise InvalidRequest(f"the codes file {uri} is missing; was the clip store moved or pruned?") from e
    except OSError as e:  # refused or unreachable: say which file, and how to snapshot without codes
        raise InvalidRequest(
            f"the codes file {uri} cannot be read ({e}); take the snapshot where the clip store is reachable, "
            "or with consolidate_codes false (--consolidate-codes false) to leave codes out"
        ) from e
    try:
        grid = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise InvalidRequest(f"{uri} is not a NumPy .npy file of codes: {e}") from e
    return checked_grid(grid, uri)


def checked_grid(grid: np.ndarray, where: str) -> np.ndarray:
    """``grid`` unchanged if it is a non-empty integer grid [K, T] whose values fit int16.

    Args:
        grid: A clip's codes.
        where: Names the clip in the error (its codes URI).

    Raises:
        InvalidRequest: Not an integer [K, T] grid with T > 0, or a value outside int16.
    """
    if grid.ndim != 2 or grid.shape[1] == 0 or not np.issubdtype(grid.dtype, np.integer):
        raise InvalidRequest(f"{where} must hold integer codes [K, T] with T > 0, got {grid.dtype} {grid.shape}")
    info = np.iinfo(CODES_DTYPE)
    low, high = int(grid.min()), int(grid.max())
    if low < info.min or high > info.max:
        raise InvalidRequest(
            f"{where} holds the code {high if high > info.max else low}, which does not fit int16 "
            f"[{info.min}, {info.max}]: codes are codebook indices (EnCodec's codebooks have 2048 entries), "
            "so this file is not codes of a MusicGen-like tokenizer"
        )
    return grid


class _ShardWriter:
    """Appends grids to int16 shards of at most ``shard_values`` codes (a larger clip gets a shard of its own)."""

    def __init__(self, dest_url: str, shard_values: int) -> None:
        self.dest_url = dest_url
        self.shard_values = shard_values
        self.buffer = np.empty(0, dtype=CODES_DTYPE)
        self.used = 0
        self.shard = 0
        self.written: list[str] = []

    def add(self, grid: np.ndarray) -> tuple[int, int]:
        """Append ``grid`` [K, T]; return its (shard, offset)."""
        size = grid.size
        if self.used and self.used + size > self.shard_values:
            self.flush()
        if self.used + size > self.buffer.size:
            grown = np.empty(max(self.shard_values, self.used + size), dtype=CODES_DTYPE)
            grown[: self.used] = self.buffer[: self.used]
            self.buffer = grown
        self.buffer[self.used : self.used + size] = grid.reshape(-1)  # [K * T], codebook by codebook
        offset, self.used = self.used, self.used + size
        return self.shard, offset

    def flush(self) -> None:
        """Write the current shard (if it holds anything) and start the next one."""
        if not self.used:
            return
        out = io.BytesIO()
        np.save(out, self.buffer[: self.used], allow_pickle=False)
        write_durably(join_url(self.dest_url, shard_name(self.shard)), out.getvalue())
        self.written.append(shard_name(self.shard))
        self.shard, self.used = self.shard + 1, 0


def distinct_clips(tables: Sequence[pa.Table]) -> pa.Table:
    """``clip_id`` and ``codes_uri`` of every clip A or B of the preference tables, once each, by clip id."""
    sides = [
        table.select([f"clip_{side}_id", f"clip_{side}_codes_uri"]).rename_columns(["clip_id", "codes_uri"])
        for table in tables
        for side in "ab"
    ]
    if not sides:
        return pa.table({"clip_id": pa.array([], pa.string()), "codes_uri": pa.array([], pa.string())})
    grouped = pa.concat_tables(sides).group_by("clip_id", use_threads=False).aggregate([("codes_uri", "min")])
    # by name: the column order of group_by's output differs between pyarrow versions
    clips = pa.table({"clip_id": grouped["clip_id"], "codes_uri": grouped["codes_uri_min"]})
    return clips.sort_by([("clip_id", "ascending")])


def pack_codes(
    clips: pa.Table, dest_url: str, *, shard_bytes: int = DEFAULT_SHARD_BYTES, threads: int = FETCH_THREADS
) -> dict[str, Any]:
    """Fetch every clip's codes once and write them as int16 shards and an index under ``dest_url``.

    Args:
        clips: ``clip_id`` and ``codes_uri``, one row per clip, in the order to pack them (see
            :func:`distinct_clips`).
        dest_url: The snapshot folder; the files go under its ``codes/``.
        shard_bytes: Most bytes of codes per shard.
        threads: GETs in flight at once from an object store (a local clip store is read in order).

    Returns:
        The manifest's ``codes`` entry: clips, codes, bytes, dtype and the files written (index last).

    Raises:
        InvalidRequest: A clip has no codes URI, or its file is missing or holds no valid codes.
    """
    missing = clips.filter(pc.invert(pc.fill_null(pc.greater(pc.utf8_length(clips["codes_uri"]), 0), False)))
    if missing.num_rows:
        raise InvalidRequest(
            f"clip {missing['clip_id'][0].as_py()} has no codes_uri, so its codes cannot be packed; "
            "take the snapshot with consolidate_codes false (--consolidate-codes false) to leave codes out"
        )
    uris = clips["codes_uri"].combine_chunks()
    first = uris[0].as_py() if len(uris) else ""
    # the clips share one store, so the first one tells; a local read is CPU work, not waiting, and threads
    # would only take turns on the GIL (measured: no faster, and 3x slower on a busy machine)
    if threads == 1 or not first or isinstance(fsspec.core.url_to_fs(first)[0], LocalFileSystem):
        grids = (read_codes_file(uri.as_py()) for uri in uris)
        return write_packed(clips, grids, dest_url, shard_bytes=shard_bytes)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="codes-fetch") as pool:
        fetched = _fetched(pool, (uri.as_py() for uri in uris), window=4 * threads)
        return write_packed(clips, fetched, dest_url, shard_bytes=shard_bytes)


def write_packed(
    clips: pa.Table, grids: Iterable[np.ndarray], dest_url: str, *, shard_bytes: int = DEFAULT_SHARD_BYTES
) -> dict[str, Any]:
    """Append ``grids`` (one per clip, in order) to int16 shards under ``dest_url``/codes and write the index.

    Args:
        clips: ``clip_id`` and ``codes_uri`` (kept in the index, for error messages) of each grid, in order.
        grids: Each clip's codes, integer [K, T]; consumed one at a time.
        dest_url: The snapshot folder.
        shard_bytes: Most bytes of codes per shard.

    Returns:
        The manifest's ``codes`` entry (see :func:`pack_codes`).

    Raises:
        InvalidRequest: A grid that is not integer [K, T] with T > 0, or with a value outside int16.
    """
    writer = _ShardWriter(dest_url, max(1, shard_bytes // CODES_DTYPE.itemsize))
    count = clips.num_rows
    # [C] each, filled in place: a few bytes a clip, where lists of Python ints took ~40 bytes a number
    numbers = {
        name: np.zeros(count, INDEX_SCHEMA.field(name).type.to_pandas_dtype()) for name in INDEX_SCHEMA.names[2:]
    }
    uris = clips["codes_uri"].combine_chunks()
    for row, grid in zip(range(count), tqdm(grids, total=count, desc="packing codes"), strict=True):
        checked = checked_grid(grid, uris[row].as_py())
        numbers["shard"][row], numbers["offset"][row] = writer.add(checked)
        numbers["num_codebooks"][row], numbers["frames"][row] = checked.shape
        numbers["min_code"][row], numbers["max_code"][row] = checked.min(), checked.max()
    writer.flush()
    index = pa.table({"clip_id": clips["clip_id"], "codes_uri": uris, **numbers}, schema=INDEX_SCHEMA)
    write_durably(join_url(dest_url, INDEX_FILE), parquet_bytes(index))
    total = int(np.sum(numbers["num_codebooks"].astype(np.int64) * numbers["frames"]))
    logger.info("packed the codes of %d clips into %d shards under %s", count, len(writer.written), dest_url)
    return {
        "clips": count,
        "codes": total,
        "bytes": total * CODES_DTYPE.itemsize,
        "dtype": CODES_DTYPE.name,
        "files": [*writer.written, INDEX_FILE],
    }


def _fetched(pool: ThreadPoolExecutor, uris: Iterable[str], window: int) -> Iterator[np.ndarray]:
    """The grids of ``uris`` in order, with at most ``window`` fetched ahead: memory stays a window of clips."""
    pending: collections.deque[Future[np.ndarray]] = collections.deque()
    for uri in uris:
        pending.append(pool.submit(read_codes_file, uri))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True, slots=True)
class _Index:
    """The index's columns as NumPy arrays (a few numbers per clip)."""

    clip_ids: pa.Array  # string [C]: Arrow, so forked workers share its pages (no per-item refcounts)
    shard: np.ndarray  # int32 [C]
    offset: np.ndarray  # int64 [C]
    num_codebooks: np.ndarray  # int32 [C]
    frames: np.ndarray  # int32 [C]
    min_code: np.ndarray  # int32 [C]
    max_code: np.ndarray  # int32 [C]


class PackedCodes:
    """The packed codes of a snapshot: look a clip up by row, read its grid from its shard.

    A grid is read with one ``pread`` of its bytes, not through a memory map: an epoch touches every page
    of the shards, and mapped pages count in the process's resident memory, while read pages stay in the
    page cache, shared by the workers and the next epoch and dropped first when memory runs short.

    The clips' codes URIs stay in the index file (read again to name a clip in an error), so what a
    trainer holds per clip is its id and six numbers.

    Args:
        index: The index table (:data:`INDEX_SCHEMA`, ``codes_uri`` not needed).
        shard_paths: Local paths of the shards, by shard number.
        index_url: Where the index file is.
    """

    def __init__(self, index: pa.Table, shard_paths: Sequence[str], index_url: str) -> None:
        numbers = {
            name: index[name].combine_chunks().to_numpy(zero_copy_only=False) for name in INDEX_SCHEMA.names[2:]
        }
        self._index = _Index(clip_ids=index["clip_id"].combine_chunks(), **numbers)
        self.shard_paths = list(shard_paths)
        self.index_url = index_url
        self._files: dict[int, tuple[int, int]] = {}  # shard → (file descriptor, offset of its data)
        self._codes = int(
            pc.sum(pc.multiply(pc.cast(index["num_codebooks"], pa.int64()), index["frames"])).as_py() or 0
        )

    @classmethod
    def open(cls, snapshot_url: str, *, cache_dir: str | None = None) -> "PackedCodes":
        """Open the packed codes of a snapshot; shards on an object store are first copied to ``cache_dir``.

        Args:
            snapshot_url: The snapshot folder (local path or fsspec URL).
            cache_dir: Local folder for copies of the shards of a snapshot on an object store (its caller
                removes it; a local snapshot's shards are read where they are).

        Returns:
            The codes, with no shard open yet.

        Raises:
            InvalidRequest: The snapshot has no packed codes, or is on an object store and no ``cache_dir``
                was given.
        """
        fs, index_path = fsspec.core.url_to_fs(join_url(snapshot_url, INDEX_FILE))
        if not fs.exists(index_path):
            raise InvalidRequest(f"{snapshot_url} has no packed codes ({INDEX_FILE})")
        index_url = join_url(snapshot_url, INDEX_FILE)
        with parquet_file(index_url) as f:
            index = f.read(columns=[name for name in INDEX_SCHEMA.names if name != "codes_uri"])
        shards = int(pc.max(index["shard"]).as_py()) + 1 if index.num_rows else 0
        urls = [join_url(snapshot_url, shard_name(s)) for s in range(shards)]
        if isinstance(fs, LocalFileSystem):
            return cls(index, [fsspec.core.url_to_fs(url)[1] for url in urls], index_url)
        if cache_dir is None:
            raise InvalidRequest(
                f"{snapshot_url} is on an object store: give cache_dir, a local folder for its shards"
            )
        paths = [os.path.join(cache_dir, os.path.basename(url)) for url in urls]
        logger.info("copying %d code shards of %s to %s", shards, snapshot_url, cache_dir)
        fs.get([fsspec.core.url_to_fs(url)[1] for url in urls], paths)  # fsspec fetches them concurrently
        return cls(index, paths, index_url)

    def __len__(self) -> int:
        return len(self._index.shard)

    def __getstate__(self) -> dict[str, Any]:
        # a spawned DataLoader worker opens the shards itself: descriptors do not pickle (forked ones may share
        # them: pread takes its own offset and moves no shared file position)
        return {
            **{name: getattr(self, name) for name in ("_index", "shard_paths", "index_url", "_codes")},
            "_files": {},
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def rows_of(self, clip_ids: Sequence[str] | pa.Array) -> np.ndarray:
        """The index rows of ``clip_ids``, int32 [N].

        Raises:
            InvalidRequest: A clip id is not in the index.
        """
        wanted = pa.array(clip_ids, pa.string()) if not isinstance(clip_ids, pa.Array) else clip_ids
        rows = pc.index_in(wanted, value_set=self._index.clip_ids)
        if rows.null_count:
            absent = wanted.filter(pc.is_null(rows))[0].as_py()
            raise InvalidRequest(f"clip {absent} is not among the snapshot's packed codes; re-take the snapshot")
        return rows.to_numpy(zero_copy_only=False)  # int32: an index holds fewer than 2^31 clips

    def codes_uri(self, row: int) -> str:
        """Where the clip at ``row`` was fetched from (read from the index file: for messages, not for loops)."""
        with parquet_file(self.index_url) as f:
            return str(f.read(columns=["codes_uri"])["codes_uri"][row].as_py())

    def grid(self, row: int) -> np.ndarray:
        """The codes of the clip at ``row``: int16 [K, T], read from its shard into an array of its own."""
        index = self._index
        fd, data_offset = self._file(int(index.shard[row]))
        shape = (int(index.num_codebooks[row]), int(index.frames[row]))
        size = shape[0] * shape[1] * CODES_DTYPE.itemsize
        data = os.pread(fd, size, data_offset + int(index.offset[row]) * CODES_DTYPE.itemsize)
        if len(data) != size:
            raise InvalidRequest(f"{self.shard_paths[int(index.shard[row])]} ends early: the shard is truncated")
        return np.frombuffer(data, dtype=CODES_DTYPE).reshape(shape)  # [K, T]

    def _file(self, shard: int) -> tuple[int, int]:
        if shard not in self._files:
            path = self.shard_paths[shard]
            with open(path, "rb") as f:  # the .npy header: where the data starts, and that it is int16 [N]
                version = np.lib.format.read_magic(f)
                shape, _, dtype = (
                    np.lib.format.read_array_header_1_0(f)
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0(f)
                )
                data_offset = f.tell()
            if dtype != CODES_DTYPE or len(shape) != 1:
                raise InvalidRequest(f"{path} holds {dtype} {shape}, not the int16 [N] of a code shard")
            self._files[shard] = (os.open(path, os.O_RDONLY), data_offset)
        return self._files[shard]

    def close(self) -> None:
        """Close the shard files this process opened (they reopen on the next read)."""
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    def check(self, rows: np.ndarray, num_codebooks: int, vocab_size: int) -> None:
        """Refuse clips the policy cannot read, naming the first one's codes URI, from the index alone.

        Args:
            rows: Index rows to check, int [N].
            num_codebooks: K of the policy.
            vocab_size: V of the policy.

        Raises:
            InvalidRequest: A clip with another K, or with ids outside [0, V).
        """
        index = self._index
        wrong_k = rows[index.num_codebooks[rows] != num_codebooks]
        if wrong_k.size:
            row = int(wrong_k[0])
            raise InvalidRequest(
                f"{self.codes_uri(row)} does not fit the policy: it has {int(index.num_codebooks[row])} codebooks; "
                f"this model uses {num_codebooks}"
            )
        outside = rows[(index.min_code[rows] < 0) | (index.max_code[rows] >= vocab_size)]
        if outside.size:
            row = int(outside[0])
            raise InvalidRequest(
                f"{self.codes_uri(row)} does not fit the policy: it holds ids outside [0, {vocab_size}): "
                f"{int(index.min_code[row])}..{int(index.max_code[row])}"
            )

    def summary(self) -> dict[str, int]:
        """Clips, shards and codes held."""
        return {"clips": len(self), "shards": len(self.shard_paths), "codes": self._codes}


def packed_or_packing(snapshot_url: str, clips: Callable[[], pa.Table], *, cache_dir: str) -> PackedCodes:
    """The snapshot's packed codes, or, for a snapshot taken without them, ``clips()`` packed into ``cache_dir``.

    Args:
        snapshot_url: The snapshot folder.
        clips: Returns ``clip_id`` and ``codes_uri`` of the clips to pack; called only if the snapshot has
            none packed, so a packed snapshot never reads its clips' URIs.
        cache_dir: A local folder, which the caller removes, to pack them in or copy remote shards to.

    Returns:
        The codes.

    Raises:
        InvalidRequest: Packing failed (a missing or invalid codes file).
    """
    fs, index_path = fsspec.core.url_to_fs(join_url(snapshot_url, INDEX_FILE))
    if fs.exists(index_path):
        return PackedCodes.open(snapshot_url, cache_dir=cache_dir)
    to_pack = clips()
    logger.warning(
        "%s was taken without packed codes: fetching the codes of %d clips into %s for this run "
        "(take snapshots with consolidate_codes true to fetch them once)",
        snapshot_url,
        to_pack.num_rows,
        cache_dir,
    )
    pack_codes(to_pack, cache_dir)
    return PackedCodes.open(cache_dir)
