-- The bare-engine limit: turnstile_daily in one DuckDB statement, S3 to S3.
-- Same rules as the dbt models (README "The calculation"), no state, no tests,
-- no lineage. {source} and {target} are filled in by bench/run.py.
copy (
    with

    raw as (
        select * from read_csv({source}, header = true, all_varchar = true, union_by_name = true)
    ),

    readings as (
        select
            trim("CA") || '-' || trim("UNIT") || '-' || trim("SCP") as turnstile_id,
            trim("CA") as control_area,
            trim("UNIT") as remote_unit,
            trim("SCP") as scp,
            trim("STATION") as station,
            trim("LINENAME") as line_names,
            trim("DIVISION") as division,
            strptime(trim("DATE") || ' ' || trim("TIME"), '%m/%d/%Y %H:%M:%S') as reading_at,
            upper(trim("DESC")) as audit_type,
            cast(trim("ENTRIES") as bigint) as cumulative_entries,
            cast(trim("EXITS") as bigint) as cumulative_exits
        from raw
    ),

    deduplicated as (
        select *
        from readings
        qualify row_number() over (
            partition by turnstile_id, reading_at
            order by
                case when audit_type = 'REGULAR' then 0 else 1 end,
                cumulative_entries,
                cumulative_exits
        ) = 1
    ),

    deltas as (
        select
            *,
            abs(cumulative_entries - lag(cumulative_entries) over history) as entries_delta,
            abs(cumulative_exits - lag(cumulative_exits) over history) as exits_delta,
            cast(reading_at as date) as service_date
        from deduplicated
        window history as (partition by turnstile_id order by reading_at)
    ),

    flagged as (
        select
            *,
            coalesce(entries_delta > 10000, false) as is_entries_anomaly,
            coalesce(exits_delta > 10000, false) as is_exits_anomaly
        from deltas
    )

    select
        turnstile_id,
        any_value(control_area) as control_area,
        any_value(remote_unit) as remote_unit,
        any_value(scp) as scp,
        arg_max(station, reading_at) as station,
        arg_max(line_names, reading_at) as line_names,
        arg_max(division, reading_at) as division,
        service_date,
        coalesce(sum(entries_delta) filter (where not is_entries_anomaly), 0) as entries,
        coalesce(sum(exits_delta) filter (where not is_exits_anomaly), 0) as exits,
        count(*) as readings,
        count(*) filter (where is_entries_anomaly or is_exits_anomaly) as anomalies
    from flagged
    group by turnstile_id, service_date
    order by turnstile_id, service_date
) to {target} (format csv, header true)
