with

turnstile_days as (

    select * from {{ ref('turnstile_daily') }}

),

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

    from turnstile_days

    group by remote_unit, service_date, station

),

totals as (

    select
        remote_unit,
        service_date,
        cast(sum(entries) as bigint) as entries,
        cast(sum(exits) as bigint) as exits

    from turnstile_days

    group by remote_unit, service_date

),

final as (

    select
        totals.remote_unit,
        station_names.station,
        totals.service_date,
        totals.entries,
        totals.exits

    from totals

    inner join station_names
        on
            totals.remote_unit = station_names.remote_unit
            and totals.service_date = station_names.service_date
            and station_names.name_rank = 1

)

select * from final
