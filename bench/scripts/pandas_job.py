"""What people write instead, with pandas: a stateless job, as a cloud-function tutorial would.

Lists every object under ``raw/turnstile/`` with boto3, reads each into a
DataFrame, then sorts, deduplicates, diffs and groups all of them, writes
``turnstile_daily`` as CSV and puts it back. It has no state: each new week
recomputes everything. Endpoint and keys come from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).

    python bench/scripts/pandas_job.py BUCKET PREFIX OUTPUT_KEY
"""

from __future__ import annotations

import io
import sys

import boto3
import pandas as pd

THRESHOLD = 10_000


def main(bucket: str, prefix: str, output_key: str) -> None:
    s3 = boto3.client("s3")
    frames = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            frames.append(
                pd.read_csv(io.BytesIO(body), compression="gzip", dtype=str, keep_default_na=False)
            )
    df = pd.concat(frames, ignore_index=True)
    del frames
    df.columns = [c.strip() for c in df.columns]
    for column in ("CA", "UNIT", "SCP", "STATION", "LINENAME", "DIVISION", "DESC"):
        df[column] = df[column].str.strip()
    df["turnstile_id"] = df["CA"] + "-" + df["UNIT"] + "-" + df["SCP"]
    df["reading_at"] = pd.to_datetime(
        df["DATE"].str.strip() + " " + df["TIME"].str.strip(), format="%m/%d/%Y %H:%M:%S"
    )
    df["entries"] = df["ENTRIES"].str.strip().astype("int64")
    df["exits"] = df["EXITS"].str.strip().astype("int64")
    df["is_audit"] = (df["DESC"].str.upper() != "REGULAR").astype("int8")
    df = df.sort_values(["turnstile_id", "reading_at", "is_audit", "entries", "exits"])
    df = df.drop_duplicates(["turnstile_id", "reading_at"], keep="first")
    previous = df.groupby("turnstile_id", sort=False)[["entries", "exits"]].shift()
    df["entries_delta"] = (df["entries"] - previous["entries"]).abs()
    df["exits_delta"] = (df["exits"] - previous["exits"]).abs()
    df["entries_anomaly"] = df["entries_delta"] > THRESHOLD
    df["exits_anomaly"] = df["exits_delta"] > THRESHOLD
    df["service_date"] = df["reading_at"].dt.date
    df["entries_kept"] = df["entries_delta"].where(~df["entries_anomaly"], 0).fillna(0)
    df["exits_kept"] = df["exits_delta"].where(~df["exits_anomaly"], 0).fillna(0)
    df["anomaly"] = df["entries_anomaly"] | df["exits_anomaly"]
    daily = (
        df.groupby(["turnstile_id", "service_date"], sort=True)
        .agg(
            control_area=("CA", "first"),
            remote_unit=("UNIT", "first"),
            scp=("SCP", "first"),
            station=("STATION", "last"),
            line_names=("LINENAME", "last"),
            division=("DIVISION", "last"),
            entries=("entries_kept", "sum"),
            exits=("exits_kept", "sum"),
            readings=("entries", "size"),
            anomalies=("anomaly", "sum"),
        )
        .reset_index()
    )
    for column in ("entries", "exits", "anomalies"):
        daily[column] = daily[column].astype("int64")
    columns = [
        "turnstile_id", "control_area", "remote_unit", "scp", "station", "line_names",
        "division", "service_date", "entries", "exits", "readings", "anomalies",
    ]  # fmt: skip
    out = daily[columns].to_csv(index=False).encode()
    s3.put_object(Bucket=bucket, Key=output_key, Body=out)
    print(len(daily))


if __name__ == "__main__":
    main(*sys.argv[1:4])
