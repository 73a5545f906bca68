{#- A full build on DuckDB runs month by month: the post-hook (macros/backfill.sql). -#}
{{
    config(
        materialized='incremental',
        unique_key=['turnstile_id', 'service_date'],
        incremental_strategy=incremental_strategy(),
        partition_by=incremental_partitions('service_date'),
        on_schema_change='append_new_columns',
        post_hook="{{ backfill(ref('int_turnstile_intervals'), 'service_date') }}",
    )
}}

with

intervals as (

    select * from {{ ref('int_turnstile_intervals') }}

),

named_readings as (

    -- The names each reading carries (the intervals keep only counters).
    select * from {{ ref('int_turnstile_readings_deduplicated') }}

),

{% if is_incremental() %}

{#- Constants, so the scans below skip the history's row groups (macros/incremental_bounds.sql). -#}
{%- set bounds = incremental_bounds(
    ref('int_turnstile_intervals'), '_refreshed_at', 'service_date', 'date'
) %}

changed_days as (

    -- Turnstile days with an interval (re)computed since this model's last build.
    select distinct
        turnstile_id,
        service_date

    from intervals

    where
        _refreshed_at > {{ bounds.since }}
        -- The same rows; as a constant it skips the history's row groups.
        -- DuckDB may materialise `intervals` (two CTEs read it) with the OR
        -- of their filters: without this bound it read all 64.7M rows.
        and service_date >= {{ bounds.low }}

),

day_intervals as (

    -- All of each changed day's intervals, not only the changed ones.
    select intervals.*

    from intervals

    inner join changed_days
        on
            intervals.turnstile_id = changed_days.turnstile_id
            and intervals.service_date = changed_days.service_date

    -- The intervals are kept in time order: read only the changed days' span.
    where
        intervals.service_date >= {{ bounds.low }}
        and intervals.service_date <= {{ bounds.high }}

),

day_readings as (

    -- The same days' readings, one per interval.
    select named_readings.*

    from named_readings

    inner join changed_days
        on
            named_readings.turnstile_id = changed_days.turnstile_id
            and cast(named_readings.reading_at as date) = changed_days.service_date

    -- Clustered by time too: read only the changed days' span.
    where
        named_readings.reading_at >= {{ bounds.low }}
        and named_readings.reading_at < {{ bounds.high }} + interval 1 day

),

{% else %}

{%- set backfill = backfill_slice('date') %}

day_intervals as (

    select * from intervals

    {% if backfill %}
    -- A full build on DuckDB: one month of days per statement; the intervals
    -- are kept in time order, so each month's scan skips the others'.
    where
        service_date >= {{ backfill.low }}
        and service_date < {{ backfill.high }}
    {% endif %}

),

day_readings as (

    select * from named_readings

    {% if backfill %}
    where
        reading_at >= {{ backfill.low }}
        and reading_at < {{ backfill.high }}
    {% endif %}

),

{% endif %}

daily_counts as (

    select
        turnstile_id,
        service_date,
        sum(entries_delta) filter (where not is_entries_anomaly) as entries,
        sum(exits_delta) filter (where not is_exits_anomaly) as exits,
        count(*) as readings,
        count(*) filter (where is_entries_anomaly or is_exits_anomaly) as anomalies,
        max(_refreshed_at) as _refreshed_at

    from day_intervals

    group by turnstile_id, service_date

),

daily_names as (

    select
        turnstile_id,
        cast(reading_at as date) as service_date,
        any_value(control_area) as control_area,
        any_value(remote_unit) as remote_unit,
        any_value(scp) as scp,
        -- Names can change within a day: take the day's latest reading's.
        max_by(station, reading_at) as station,
        max_by(line_names, reading_at) as line_names,
        max_by(division, reading_at) as division

    from day_readings

    group by turnstile_id, cast(reading_at as date)

),

daily as (

    -- A day's intervals and its readings are the same rows: every day has both.
    select
        daily_counts.*,
        daily_names.control_area,
        daily_names.remote_unit,
        daily_names.scp,
        daily_names.station,
        daily_names.line_names,
        daily_names.division

    from daily_counts

    inner join daily_names
        on
            daily_counts.turnstile_id = daily_names.turnstile_id
            and daily_counts.service_date = daily_names.service_date

),

final as (

    select
        turnstile_id,
        control_area,
        remote_unit,
        scp,
        station,
        line_names,
        division,
        service_date,
        cast(coalesce(entries, 0) as bigint) as entries,
        cast(coalesce(exits, 0) as bigint) as exits,
        cast(readings as bigint) as readings,
        cast(anomalies as bigint) as anomalies,
        _refreshed_at

    from daily

)

-- In time order: later runs' filters on service_date skip old row groups.
{{ complete_partitions(
    'final',
    unique_key=['turnstile_id', 'service_date'],
    time_column='service_date',
    order_by='service_date, turnstile_id',
    partition_column='service_date',
) }}
