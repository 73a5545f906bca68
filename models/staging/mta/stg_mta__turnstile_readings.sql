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
        -- DATE is always US MM/DD/YYYY: never let a sniffer guess day-first.
        strptime(
            trim(source.date) || ' ' || trim(source.time), '%m/%d/%Y %H:%M:%S'
        ) as reading_at,
        upper(trim(source.desc)) as audit_type,
        cast(trim(source.entries) as bigint) as cumulative_entries,
        cast(trim(source.exits) as bigint) as cumulative_exits,
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
