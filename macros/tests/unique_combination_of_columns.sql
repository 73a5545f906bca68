{#
    Generic test: no two rows share the same values of `combination`
    (a compound primary key). Fails with one row per duplicated key.
#}
{% test unique_combination_of_columns(model, combination) %}

    select
        {{ combination | join(', ') }},
        count(*) as duplicate_rows

    from {{ model }}

    group by {{ combination | join(', ') }}

    having count(*) > 1

{% endtest %}
