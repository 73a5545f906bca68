with

intervals as (

    select * from {{ ref('int_turnstile_intervals') }}

),

daily as (

    select
        turnstile_id,
        service_date,
        any_value(control_area) as control_area,
        any_value(remote_unit) as remote_unit,
        any_value(scp) as scp,
        -- Names can change within a day: take the day's latest reading's.
        arg_max(station, reading_at) as station,
        arg_max(line_names, reading_at) as line_names,
        arg_max(division, reading_at) as division,
        sum(entries_delta) filter (where not is_entries_anomaly) as entries,
        sum(exits_delta) filter (where not is_exits_anomaly) as exits,
        count(*) as readings,
        count(*) filter (where is_entries_anomaly or is_exits_anomaly) as anomalies

    from intervals

    group by turnstile_id, service_date

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
        cast(anomalies as bigint) as anomalies

    from daily

)

select * from final
