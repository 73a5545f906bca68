"""What people write instead, with polars: a stateless job, as a cloud-function tutorial would.

Lists every object under ``raw/turnstile/`` with boto3, reads each into a
DataFrame, then sorts, deduplicates, diffs and groups all of them, writes
``turnstile_daily`` as CSV and puts it back. It has no state: each new week
recomputes everything. Endpoint and keys come from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).

    python bench/scripts/polars_job.py BUCKET PREFIX OUTPUT_KEY
"""

from __future__ import annotations

import gzip
import sys

import boto3
import polars as pl

THRESHOLD = 10_000


def main(bucket: str, prefix: str, output_key: str) -> None:
    s3 = boto3.client("s3")
    frames = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            frames.append(pl.read_csv(gzip.decompress(body), infer_schema=False))
    df = pl.concat(frames, how="diagonal")
    del frames
    df = df.rename({c: c.strip() for c in df.columns})
    text = ("CA", "UNIT", "SCP", "STATION", "LINENAME", "DIVISION", "DESC")
    df = df.with_columns(pl.col(c).str.strip_chars() for c in text)
    df = df.with_columns(
        (pl.col("CA") + "-" + pl.col("UNIT") + "-" + pl.col("SCP")).alias("turnstile_id"),
        (pl.col("DATE").str.strip_chars() + " " + pl.col("TIME").str.strip_chars())
        .str.strptime(pl.Datetime, "%m/%d/%Y %H:%M:%S")
        .alias("reading_at"),
        pl.col("ENTRIES").str.strip_chars().cast(pl.Int64).alias("entries"),
        pl.col("EXITS").str.strip_chars().cast(pl.Int64).alias("exits"),
        (pl.col("DESC").str.to_uppercase() != "REGULAR").cast(pl.Int8).alias("is_audit"),
    )
    df = df.sort(["turnstile_id", "reading_at", "is_audit", "entries", "exits"])
    df = df.unique(["turnstile_id", "reading_at"], keep="first", maintain_order=True)
    df = df.with_columns(
        (pl.col("entries") - pl.col("entries").shift().over("turnstile_id"))
        .abs()
        .alias("entries_delta"),
        (pl.col("exits") - pl.col("exits").shift().over("turnstile_id")).abs().alias("exits_delta"),
        pl.col("reading_at").dt.date().alias("service_date"),
    )
    df = df.with_columns(
        (pl.col("entries_delta") > THRESHOLD).fill_null(False).alias("entries_anomaly"),
        (pl.col("exits_delta") > THRESHOLD).fill_null(False).alias("exits_anomaly"),
    )
    daily = (
        df.group_by(["turnstile_id", "service_date"])
        .agg(
            pl.col("CA").first().alias("control_area"),
            pl.col("UNIT").first().alias("remote_unit"),
            pl.col("SCP").first().alias("scp"),
            pl.col("STATION").last().alias("station"),
            pl.col("LINENAME").last().alias("line_names"),
            pl.col("DIVISION").last().alias("division"),
            pl.col("entries_delta").filter(~pl.col("entries_anomaly")).sum().alias("entries"),
            pl.col("exits_delta").filter(~pl.col("exits_anomaly")).sum().alias("exits"),
            pl.len().cast(pl.Int64).alias("readings"),
            (pl.col("entries_anomaly") | pl.col("exits_anomaly"))
            .sum()
            .cast(pl.Int64)
            .alias("anomalies"),
        )
        .sort(["turnstile_id", "service_date"])
    )
    columns = [
        "turnstile_id", "control_area", "remote_unit", "scp", "station", "line_names",
        "division", "service_date", "entries", "exits", "readings", "anomalies",
    ]  # fmt: skip
    out = daily.select(columns).write_csv().encode()
    s3.put_object(Bucket=bucket, Key=output_key, Body=out)
    print(daily.height)


if __name__ == "__main__":
    main(*sys.argv[1:4])
