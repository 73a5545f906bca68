{#- A full build on DuckDB runs month by month: the post-hook (macros/backfill.sql). -#}
{{
    config(
        materialized='incremental',
        unique_key=['turnstile_id', 'reading_at'],
        incremental_strategy=incremental_strategy(),
        partition_by=incremental_partitions(),
        on_schema_change='append_new_columns',
        post_hook="{{ backfill(ref('int_turnstile_readings_deduplicated'), 'reading_at') }}",
    )
}}

with

readings as (

    -- The counters are all a delta needs. Names and lineage stay in the
    -- deduplicated table, one row per (turnstile_id, reading_at) as here:
    -- every text column carried down would be rewritten for every reading.
    select
        turnstile_id,
        reading_at,
        cumulative_entries,
        cumulative_exits,
        _loaded_at

    from {{ ref('int_turnstile_readings_deduplicated') }}

),

{%- set backfill = backfill_slice('timestamp') %}

{% if is_incremental() or backfill %}

{% if is_incremental() %}
{#- Constants, so the scans below skip the history's row groups (macros/incremental_bounds.sql). -#}
{%- set bounds = incremental_bounds(
    ref('int_turnstile_readings_deduplicated'), '_loaded_at', 'reading_at', 'timestamp'
) %}
{%- set built_before = this %}
{% else %}
{#-
    A full build on DuckDB, one month per statement: the month's readings are
    the changed ones, and the readings before them are in the deduplicated
    table (this table does not exist yet when the first month is built).
-#}
{%- set bounds = backfill %}
{%- set built_before = ref('int_turnstile_readings_deduplicated') %}
{% endif %}

changed_turnstiles as (

    -- Per turnstile, the earliest reading that is new (or newly preferred)
    -- since the last build. Its delta and every later one are recomputed: a
    -- late week changes the first delta of the week after it.
    select
        turnstile_id,
        min(reading_at) as changed_from

    from readings

    {% if is_incremental() %}
    where
        _loaded_at > {{ bounds.since }}
        -- The same rows; as a constant it skips the history's row groups.
        and reading_at >= {{ bounds.low }}
    {% else %}
    where
        reading_at >= {{ bounds.low }}
        and reading_at < {{ bounds.high }}
    {% endif %}

    group by turnstile_id

),

{#-
    The reading just before each change: searched first from the week before
    the earliest change to the latest change, where nearly every one is, then
    in the 8 weeks before that (a turnstile silent for a week or more), then
    in all older history (a new turnstile, or one back after months). Each
    search is bounded by constants, so the scan skips the row groups outside
    its span, and takes only the turnstiles the earlier ones did not find:
    with none left, DuckDB's hash join reads nothing at all.
-#}
{%- set anchor_searches = [
    {'after': bounds.low ~ ' - interval 7 day', 'before': bounds.high},
    {'after': bounds.low ~ ' - interval 63 day', 'before': bounds.low ~ ' - interval 7 day'},
    {'after': none, 'before': bounds.low ~ ' - interval 63 day'},
] %}

{% for search in anchor_searches %}

anchors_{{ loop.index }} as (

    select
        changed_turnstiles.turnstile_id,
        max(built.reading_at) as anchor_at,
        max_by(built.cumulative_entries, built.reading_at) as anchor_entries,
        max_by(built.cumulative_exits, built.reading_at) as anchor_exits

    from changed_turnstiles

    {% for earlier in range(1, loop.index) %}
    anti join anchors_{{ earlier }}
        on changed_turnstiles.turnstile_id = anchors_{{ earlier }}.turnstile_id
    {% endfor %}

    -- Every deduplicated reading as of this model's last build is one row
    -- of it: the readings before a turnstile's change are the same in both.
    -- Read here, not through a CTE: DuckDB would materialise a CTE used by
    -- each search, with the union of their bounds (all the history).
    inner join {{ built_before }} as built
        on
            changed_turnstiles.turnstile_id = built.turnstile_id
            and changed_turnstiles.changed_from > built.reading_at

    where
        {% if search.after is not none %}built.reading_at >= {{ search.after }} and {% endif %}
        built.reading_at < {{ search.before }}

    group by changed_turnstiles.turnstile_id

),

{% endfor %}

anchors as (

    -- The reading just before the change, which the first recomputed delta
    -- diffs against (none for a new turnstile). Only its values are used.
    {% for search in anchor_searches %}
    select * from anchors_{{ loop.index }}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

window_input as (

    -- The readings to recompute: each changed turnstile's from its change on.
    select
        readings.*,
        anchors.anchor_at,
        anchors.anchor_entries,
        anchors.anchor_exits

    from readings

    inner join changed_turnstiles
        on
            readings.turnstile_id = changed_turnstiles.turnstile_id
            and readings.reading_at >= changed_turnstiles.changed_from

    left join anchors
        on readings.turnstile_id = anchors.turnstile_id

    {% if is_incremental() %}
    -- The same rows; as a constant it skips the history's row groups.
    where readings.reading_at >= {{ bounds.low }}
    {% else %}
    -- A backfill's month: the next month is the next statement's.
    where
        readings.reading_at >= {{ bounds.low }}
        and readings.reading_at < {{ bounds.high }}
    {% endif %}

),

{% else %}

window_input as (

    select
        *,
        cast(null as timestamp) as anchor_at,
        cast(null as bigint) as anchor_entries,
        cast(null as bigint) as anchor_exits

    from readings

),

{% endif %}

with_previous as (

    select
        *,
        -- A turnstile's first recomputed reading diffs against its anchor
        -- (lag's default: the value when there is no earlier row).
        lag(reading_at, 1, anchor_at) over turnstile_history as previous_reading_at,
        lag(cumulative_entries, 1, anchor_entries) over turnstile_history as previous_entries,
        lag(cumulative_exits, 1, anchor_exits) over turnstile_history as previous_exits

    from window_input

    window turnstile_history as (partition by turnstile_id order by reading_at)

),

deltas as (

    select
        *,
        -- Some counters run backwards: the size of the change is what counts,
        -- exact for any two bigint counters (macros/engines.sql).
        {{ counter_delta('cumulative_entries', 'previous_entries') }} as entries_delta,
        {{ counter_delta('cumulative_exits', 'previous_exits') }} as exits_delta,
        -- A delta counts on the date of its later reading.
        cast(reading_at as date) as service_date

    from with_previous

),

flagged as (

    select
        {{ star_except(['anchor_at', 'anchor_entries', 'anchor_exits']) }},
        coalesce(entries_delta > {{ var('anomaly_threshold') }}, false) as is_entries_anomaly,
        coalesce(exits_delta > {{ var('anomaly_threshold') }}, false) as is_exits_anomaly,
        -- When this row was (re)computed: downstream models rebuild the days it touches.
        cast('{{ run_started_at }}' as {{ timestamptz() }}) as _refreshed_at

    from deltas

)

{#-
    In day order: later runs' filters on reading_at and service_date skip
    old row groups (a row group holds about three days of readings, so
    sorting within a day would skip little more). Each month of a full
    build would pay for that sort: 0.2 s of about 1.1 s, measured.
-#}
{{ complete_partitions(
    'flagged',
    unique_key=['turnstile_id', 'reading_at'],
    time_column='reading_at',
    order_by='service_date',
) }}
