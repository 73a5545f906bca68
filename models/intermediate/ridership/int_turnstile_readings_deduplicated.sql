{{
    config(
        materialized='incremental',
        unique_key=['turnstile_id', 'reading_at'],
        incremental_strategy=incremental_strategy(),
        partition_by=incremental_partitions(),
        on_schema_change='append_new_columns',
    )
}}

with

{% if is_incremental() %}

{#- Constants, so the scans below skip the history's row groups (macros/incremental_bounds.sql). -#}
{%- set bounds = incremental_bounds(
    ref('stg_mta__turnstile_readings'), '_loaded_at', 'reading_at', 'timestamp'
) %}

readings as (

    select * from {{ ref('stg_mta__turnstile_readings') }}

),

new_readings as (

    -- Readings landed since the last build, from any week, in any order.
    select *

    from readings

    where _loaded_at > {{ bounds.since }}

),

new_keys as (

    select distinct
        turnstile_id,
        reading_at

    from new_readings

),

current_winners as (

    -- The reading kept so far at each of those turnstile times: it already
    -- beat every older reading there, so only it competes with the new ones.
    -- Its _refreshed_at is set anew below.
    select {{ star_except(['_refreshed_at'], 'built', built=true) }}  -- noqa: RF02

    from {{ this }} as built

    inner join new_keys
        on
            built.turnstile_id = new_keys.turnstile_id
            and built.reading_at = new_keys.reading_at

    -- The table is kept in time order: only the row groups of the new
    -- readings' time span are read (their min/max), not the whole history.
    where
        built.reading_at >= {{ bounds.low }}
        and built.reading_at <= {{ bounds.high }}

),

candidates as (

    select * from new_readings

    {{ union_all_by_name() }}

    select * from current_winners

),

{% else %}

{#-
    A full build ranks only the turnstile times read more than once (a few
    thousand of tens of millions of readings); every other reading is kept
    as it is. No sort of the whole history: the rows keep their landing
    order, file by file, so each row group of a weekly feed spans about a
    week, and later runs' filters on reading_at still skip old row groups.
    Each CTE reads staging itself: DuckDB would materialise a CTE read three
    times, all the history, past the memory limit.
-#}
{%- set staged = ref('stg_mta__turnstile_readings') %}
read_more_than_once as (

    select
        turnstile_id,
        reading_at

    from {{ staged }}

    group by turnstile_id, reading_at

    having count(*) > 1

),

read_once as (

    select readings.*

    from {{ staged }} as readings

    anti join read_more_than_once
        on
            readings.turnstile_id = read_more_than_once.turnstile_id
            and readings.reading_at = read_more_than_once.reading_at

),

candidates as (

    select readings.*

    from {{ staged }} as readings

    semi join read_more_than_once
        on
            readings.turnstile_id = read_more_than_once.turnstile_id
            and readings.reading_at = read_more_than_once.reading_at

),

{% endif %}

ranked as (

    select
        *,
        row_number() over (
            partition by turnstile_id, reading_at
            order by
                -- A REGULAR reading beats a RECOVR AUD one at the same time,
                case when audit_type = 'REGULAR' then 0 else 1 end,
                -- then the lowest counters win.
                cumulative_entries,
                cumulative_exits,
                -- Exact duplicates: any one will do, but always the same one.
                _source_key,
                _source_row_number
        ) as preference_rank

    from candidates

),

deduplicated as (

    select
        {{ star_except(['preference_rank']) }},
        -- When this row was (re)chosen: tests check the rows the last run wrote.
        cast('{{ run_started_at }}' as {{ timestamptz() }}) as _refreshed_at

    from ranked

    where preference_rank = 1

    {% if not is_incremental() %}

    {{ union_all_by_name() }}

    select
        *,
        cast('{{ run_started_at }}' as {{ timestamptz() }}) as _refreshed_at

    from read_once

    {% endif %}

)

{#-
    An incremental run's rows in time order (a full build's in landing order,
    above): later runs' filters on reading_at skip old row groups.
-#}
{{ complete_partitions(
    'deduplicated',
    unique_key=['turnstile_id', 'reading_at'],
    time_column='reading_at',
    order_by='reading_at, turnstile_id' if is_incremental() else none,
) }}
