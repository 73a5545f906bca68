{{
    config(
        materialized='incremental',
        unique_key=['remote_unit', 'service_date'],
        incremental_strategy=incremental_strategy(),
        partition_by=incremental_partitions('service_date'),
        on_schema_change='append_new_columns',
    )
}}

with

turnstile_days as (

    select * from {{ ref('turnstile_daily') }}

),

{% if is_incremental() %}

{#- Constants, so the scans below skip the history's row groups (macros/incremental_bounds.sql). -#}
{%- set bounds = incremental_bounds(
    ref('turnstile_daily'), '_refreshed_at', 'service_date', 'date'
) %}

changed_days as (

    -- Remote unit days with a turnstile day rebuilt since this model's last build.
    select distinct
        remote_unit,
        service_date

    from turnstile_days

    where
        _refreshed_at > {{ bounds.since }}
        -- The same rows; as a constant it skips the history's row groups.
        and service_date >= {{ bounds.low }}

),

unit_days as (

    select turnstile_days.*

    from turnstile_days

    inner join changed_days
        on
            turnstile_days.remote_unit = changed_days.remote_unit
            and turnstile_days.service_date = changed_days.service_date

    -- turnstile_daily is kept in time order: read only the changed days' span.
    where
        turnstile_days.service_date >= {{ bounds.low }}
        and turnstile_days.service_date <= {{ bounds.high }}

),

{% else %}

unit_days as (

    select * from turnstile_days

),

{% endif %}

station_names as (

    -- A remote unit's turnstiles can name different stations (a complex):
    -- the name most of its turnstiles report that day, ties alphabetical.
    select
        remote_unit,
        service_date,
        station,
        row_number() over (
            partition by remote_unit, service_date
            order by count(*) desc, station
        ) as name_rank

    from unit_days

    group by remote_unit, service_date, station

),

totals as (

    select
        remote_unit,
        service_date,
        cast(sum(entries) as bigint) as entries,
        cast(sum(exits) as bigint) as exits,
        max(_refreshed_at) as _refreshed_at

    from unit_days

    group by remote_unit, service_date

),

final as (

    select
        totals.remote_unit,
        station_names.station,
        totals.service_date,
        totals.entries,
        totals.exits,
        totals._refreshed_at

    from totals

    inner join station_names
        on
            totals.remote_unit = station_names.remote_unit
            and totals.service_date = station_names.service_date
            and station_names.name_rank = 1

)

-- In time order, like the tables it is built from.
{{ complete_partitions(
    'final',
    unique_key=['remote_unit', 'service_date'],
    time_column='service_date',
    order_by='service_date, remote_unit',
    partition_column='service_date',
) }}
