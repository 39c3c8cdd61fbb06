"""
Reading the inputs of the converters (JSONL, JSON, CSV or Parquet, record by record, each named
for the error messages) and writing their outputs (JSONL, atomically); field readers shared by all
of them.

    python -m pytest -q test_convert.py
"""
import csv
import io
import json
import os
import tempfile

from data.traces import DataError, read_jsonl


def iter_records(path):
    """Yield (where, record) for every record of a JSONL, JSON, CSV or Parquet file; where is what
    DataError prints after the file name. A CSV record is a dict of the header's columns to strings."""
    if str(path).endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, None, None, "reading .parquet needs pyarrow (pip install pyarrow)") from None
        try:
            batches = pq.ParquetFile(path).iter_batches()
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(path, None, None, f"cannot read as Parquet ({e})") from None
        i = 0
        for batch in batches:  # batch by batch: the 1.79M-row DAPO file need not sit in memory twice
            for record in batch.to_pylist():
                yield f"record {i}", record
                i += 1
    elif str(path).endswith(".csv"):
        yield from csv_records(path)
    elif str(path).endswith(".json"):
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise DataError(path, None, None,
                            f"invalid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(path, None, None, 'expected a list of records or {"data": [...]}')
        yield from ((f"record {i}", record) for i, record in enumerate(data))
    else:
        yield from read_jsonl(path)


def read_text(path, encoding="utf-8"):
    """The whole file as text; an unreadable file or bytes that do not decode raise DataError."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(encoding)
    except OSError as e:
        raise DataError(path, None, None, f"cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not valid UTF-8 (byte {e.start})") from None


def csv_records(path):
    """The rows of a CSV file with a header line, as dicts; a field may span lines when quoted, so a
    row is named by its index from 0 (as the dataset's rows are), not by a line of the file."""
    reader = csv.DictReader(io.StringIO(read_text(path, "utf-8-sig"), newline=""))  # -sig: a leading BOM
    n = 0  # the row being read
    try:
        for row in reader:
            if None in row:
                raise DataError(path, f"record {n}", None, f"has {len(row[None])} more fields than the header")
            yield f"record {n}", row
            n += 1
    except csv.Error as e:
        raise DataError(path, f"record {n}", None, f"invalid CSV ({e})") from None


def write_jsonl(path, rows):
    """Write rows (dicts) as JSONL atomically: a temporary file in the same folder, renamed over
    path, so an interrupted run never leaves a half-written file that looks complete."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def text(record, field, path, where, strip=True):
    """record[field] as a non-empty string (stripped, unless not `strip`); a list of strings (an older
    s1K-1.1 revision) is joined."""
    if field not in record:
        raise DataError(path, where, field, "missing")
    value = record[field]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        raise DataError(path, where, field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, where, field, "is empty")
    return value.strip() if strip else value


def records(path):
    """iter_records, refusing anything that is not a JSON object, and an empty input."""
    n = 0
    for where, record in iter_records(path):
        if not isinstance(record, dict):
            raise DataError(path, where, None, f"expected a JSON object, got {type(record).__name__}")
        n += 1
        yield where, record
    if not n:
        raise DataError(path, None, None, "no records (the file is empty)")


def scalar(value, kinds=(str, int)):
    """value as a stripped string when it is one of kinds (never a bool) and not blank, else None."""
    if isinstance(value, bool) or not isinstance(value, kinds) or not str(value).strip():
        return None
    return str(value).strip()
