{{
    config(
        materialized='incremental',
        unique_key=['turnstile_id', 'reading_at'],
        incremental_strategy='delete+insert',
        on_schema_change='append_new_columns',
    )
}}

with

readings as (

    select * exclude (_refreshed_at) from {{ ref('int_turnstile_readings_deduplicated') }}

),

{% if is_incremental() %}

{#- Constants, so the scans below skip the history's row groups (macros/incremental_bounds.sql). -#}
{%- set bounds = incremental_bounds(
    ref('int_turnstile_readings_deduplicated'), '_loaded_at', 'reading_at', 'timestamp'
) %}

changed_turnstiles as (

    -- Per turnstile, the earliest reading that is new (or newly preferred)
    -- since the last build. Its delta and every later one are recomputed: a
    -- late week changes the first delta of the week after it.
    select
        turnstile_id,
        min(reading_at) as changed_from

    from readings

    where
        _loaded_at > {{ bounds.since }}

    group by turnstile_id

),

recent_readings as (

    -- Readings of the week before the earliest change, where nearly every
    -- anchor is: the join below then never touches older history.
    select
        turnstile_id,
        reading_at

    from readings

    where
        -- bounds.low is the earliest changed_from of all turnstiles.
        reading_at >= {{ bounds.low }} - interval 7 day

),

recent_anchors as (

    -- The reading just before each change, if it is at most a week older.
    select
        changed_turnstiles.turnstile_id,
        changed_turnstiles.changed_from,
        max(recent_readings.reading_at) as anchor_at

    from changed_turnstiles

    left join recent_readings
        on
            changed_turnstiles.turnstile_id = recent_readings.turnstile_id
            and changed_turnstiles.changed_from > recent_readings.reading_at
            and changed_turnstiles.changed_from - interval 7 day <= recent_readings.reading_at

    group by changed_turnstiles.turnstile_id, changed_turnstiles.changed_from

),

older_anchors as (

    -- Turnstiles silent for that week (or new): search their whole history.
    select
        recent_anchors.turnstile_id,
        max(readings.reading_at) as anchor_at

    from recent_anchors

    inner join readings
        on
            recent_anchors.turnstile_id = readings.turnstile_id
            and recent_anchors.changed_from > readings.reading_at

    where recent_anchors.anchor_at is null

    group by recent_anchors.turnstile_id

),

anchors as (

    -- The reading just before the change: the first recomputed delta diffs
    -- against it. In-order weeks cost one extra reading per turnstile.
    select
        recent_anchors.turnstile_id,
        recent_anchors.changed_from,
        coalesce(recent_anchors.anchor_at, older_anchors.anchor_at) as anchor_at

    from recent_anchors

    left join older_anchors
        on recent_anchors.turnstile_id = older_anchors.turnstile_id

),

window_input as (

    select
        readings.*,
        anchors.changed_from

    from readings

    inner join anchors
        on
            readings.turnstile_id = anchors.turnstile_id
            and readings.reading_at >= coalesce(anchors.anchor_at, anchors.changed_from)

    -- Cheap prefilter before the join: nothing older than the oldest anchor.
    where
        readings.reading_at >= (
            select min(coalesce(oldest.anchor_at, oldest.changed_from))
            from anchors as oldest
        )

),

{% else %}

window_input as (

    select
        *,
        cast(null as timestamp) as changed_from

    from readings

),

{% endif %}

with_previous as (

    select
        *,
        lag(reading_at) over turnstile_history as previous_reading_at,
        lag(cumulative_entries) over turnstile_history as previous_entries,
        lag(cumulative_exits) over turnstile_history as previous_exits

    from window_input

    window turnstile_history as (partition by turnstile_id order by reading_at)

),

deltas as (

    select
        *,
        -- Some counters run backwards: the size of the change is what counts.
        -- Two valid bigint counters can be further apart than a bigint holds:
        -- subtract in decimal(38, 0), which holds any such difference.
        abs(cast(cumulative_entries as decimal(38, 0)) - previous_entries) as entries_delta,
        abs(cast(cumulative_exits as decimal(38, 0)) - previous_exits) as exits_delta,
        -- A delta counts on the date of its later reading.
        cast(reading_at as date) as service_date

    from with_previous

),

flagged as (

    select
        * exclude (changed_from),
        coalesce(entries_delta > {{ var('anomaly_threshold') }}, false) as is_entries_anomaly,
        coalesce(exits_delta > {{ var('anomaly_threshold') }}, false) as is_exits_anomaly,
        -- When this row was (re)computed: downstream models rebuild the days it touches.
        cast('{{ run_started_at }}' as timestamptz) as _refreshed_at

    from deltas

    -- The anchor reading itself is not recomputed, only used.
    where changed_from is null or reading_at >= changed_from

)

-- In time order: later runs' filters on reading_at and service_date skip old row groups.
select * from flagged
order by reading_at, turnstile_id
