with

readings as (

    select * from {{ ref('int_turnstile_readings_deduplicated') }}

),

with_previous as (

    select
        *,
        lag(reading_at) over turnstile_history as previous_reading_at,
        lag(cumulative_entries) over turnstile_history as previous_entries,
        lag(cumulative_exits) over turnstile_history as previous_exits

    from readings

    window turnstile_history as (partition by turnstile_id order by reading_at)

),

deltas as (

    select
        *,
        -- Some counters run backwards: the size of the change is what counts.
        abs(cumulative_entries - previous_entries) as entries_delta,
        abs(cumulative_exits - previous_exits) as exits_delta,
        -- A delta counts on the date of its later reading.
        cast(reading_at as date) as service_date

    from with_previous

),

flagged as (

    select
        *,
        coalesce(entries_delta > {{ var('anomaly_threshold') }}, false) as is_entries_anomaly,
        coalesce(exits_delta > {{ var('anomaly_threshold') }}, false) as is_exits_anomaly

    from deltas

)

select * from flagged
