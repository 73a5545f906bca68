with

source as (

    select * from {{ source('mta', 'turnstile') }}

),

-- The object a row came from is kept once per load, in the loader's ledger.
loads as (

    select
        load_id,
        key

    from {{ source('elt', 'ledger') }}

),

renamed as (

    select
        -- Older MTA files name the control area "C/A" (landed as c_a).
        trim(coalesce(source.ca, source.c_a)) as control_area,
        trim(source.unit) as remote_unit,
        trim(source.scp) as scp,
        trim(source.station) as station,
        trim(source.linename) as line_names,
        trim(source.division) as division,
        -- Casts from the source contract (_mta__sources.yml): DATE is US
        -- MM/DD/YYYY, never a sniffer's guess. The loader quarantined every
        -- row these would fail on; a valid date plus a valid time is always
        -- a valid timestamp.
        {{ cast_source_column('mta', 'turnstile', 'date', 'source.date') }}
        + {{ cast_source_column('mta', 'turnstile', 'time', 'source.time') }} as reading_at,
        upper(trim(source.desc)) as audit_type,
        {{ cast_source_column('mta', 'turnstile', 'entries', 'source.entries') }}
            as cumulative_entries,
        {{ cast_source_column('mta', 'turnstile', 'exits', 'source.exits') }}
            as cumulative_exits,
        loads.key as _source_key,
        source._source_row_number,
        source._load_id,
        source._loaded_at

    from source
    left join loads on source._load_id = loads.load_id

),

identified as (

    select
        control_area || '-' || remote_unit || '-' || scp as turnstile_id,
        *

    from renamed

)

select * from identified
