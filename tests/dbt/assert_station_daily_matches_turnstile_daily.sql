-- Across marts: each remote unit's day in station_daily sums exactly its
-- turnstiles' days in turnstile_daily (nothing lost or counted twice).
with

turnstile_totals as (

    select
        remote_unit,
        service_date,
        sum(entries) as entries,
        sum(exits) as exits

    from {{ ref('turnstile_daily') }}

    group by remote_unit, service_date

),

station_totals as (

    select * from {{ ref('station_daily') }}

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
