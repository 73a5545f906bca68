with

readings as (

    select * from {{ ref('stg_mta__turnstile_readings') }}

),

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

    from readings

),

deduplicated as (

    select * exclude (preference_rank)

    from ranked

    where preference_rank = 1

)

select * from deduplicated
