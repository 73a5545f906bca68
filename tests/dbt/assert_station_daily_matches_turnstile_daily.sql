-- Across marts: each remote unit's day in station_daily sums exactly its
-- turnstiles' days in turnstile_daily (nothing lost or counted twice).
-- Checked for the unit days the last run rebuilt (the older ones were checked
-- when they were built): a steady run does not rescan the history.
with

rebuilt_days as (

    select distinct
        remote_unit,
        service_date

    from {{ ref('turnstile_daily') }}

    where _refreshed_at = (
        select max(latest._refreshed_at) from {{ ref('turnstile_daily') }} as latest
    )

),

turnstile_totals as (

    select
        turnstile_days.remote_unit,
        turnstile_days.service_date,
        sum(turnstile_days.entries) as entries,
        sum(turnstile_days.exits) as exits

    from {{ ref('turnstile_daily') }} as turnstile_days

    inner join rebuilt_days
        on
            turnstile_days.remote_unit = rebuilt_days.remote_unit
            and turnstile_days.service_date = rebuilt_days.service_date

    group by turnstile_days.remote_unit, turnstile_days.service_date

),

station_totals as (

    select station_days.*

    from {{ ref('station_daily') }} as station_days

    inner join rebuilt_days
        on
            station_days.remote_unit = rebuilt_days.remote_unit
            and station_days.service_date = rebuilt_days.service_date

),

mismatches as (

    select
        turnstile_totals.remote_unit,
        turnstile_totals.service_date,
        turnstile_totals.entries as turnstile_entries,
        station_totals.entries as station_entries

    from turnstile_totals

    full outer join station_totals
        on
            turnstile_totals.remote_unit = station_totals.remote_unit
            and turnstile_totals.service_date = station_totals.service_date

    where
        station_totals.remote_unit is null
        or turnstile_totals.remote_unit is null
        or turnstile_totals.entries != station_totals.entries
        or turnstile_totals.exits != station_totals.exits

)

select * from mismatches
