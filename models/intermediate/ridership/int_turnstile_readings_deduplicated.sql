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

    select * from {{ ref('stg_mta__turnstile_readings') }}

),

{% if is_incremental() %}

new_reading_keys as (

    -- Turnstile times with a reading landed since the last build, from any
    -- week, in any order. Readings that lose the de-duplication below leave
    -- the watermark where it was; they are looked at again next time, harmlessly.
    select distinct
        turnstile_id,
        reading_at

    from readings

    where _loaded_at > (
        select coalesce(max(built._loaded_at), cast('-infinity' as timestamptz))
        from {{ this }} as built
    )

),

candidates as (

    -- Every reading at those keys, old and new: the winner is chosen again.
    select readings.*

    from readings

    inner join new_reading_keys
        on
            readings.turnstile_id = new_reading_keys.turnstile_id
            and readings.reading_at = new_reading_keys.reading_at

),

{% else %}

candidates as (

    select * from readings

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

    select * exclude (preference_rank)

    from ranked

    where preference_rank = 1

)

select * from deduplicated
