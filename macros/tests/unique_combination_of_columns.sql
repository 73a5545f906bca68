{#
    Generic test: no two rows share the same values of `combination`
    (a compound primary key). Fails with one row per duplicated key.

    Two rows with the same key have the same 64-bit hash, so only rows whose
    hash is shared can be duplicates: the test groups the hashes first, then
    groups the keys of those few rows alone. Exact either way (a hash shared
    by two different keys is only a candidate, grouped by its key like any
    other); grouping tens of millions of text keys would hold them all in
    memory, where their hashes take 8 bytes each.
#}
{% test unique_combination_of_columns(model, combination) %}

    {%- set key_hash = row_hash(combination) %}

    with

    shared_hashes as (

        select {{ key_hash }} as key_hash

        from {{ model }}

        group by {{ key_hash }}

        having count(*) > 1

    ),

    candidates as (

        select {{ combination | join(', ') }}

        from {{ model }}

        where {{ key_hash }} in (select shared_hashes.key_hash from shared_hashes)

    )

    select
        {{ combination | join(', ') }},
        count(*) as duplicate_rows

    from candidates

    group by {{ combination | join(', ') }}

    having count(*) > 1

{% endtest %}
