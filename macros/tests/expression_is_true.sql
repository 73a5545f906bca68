{#
    Generic test: a SQL boolean expression holds on every row of the model
    (rows where it is false or null fail). Optional `where` narrows the rows.
#}
{% test expression_is_true(model, expression, where=none) %}

    select *

    from {{ model }}

    where
        not coalesce(({{ expression }}), false)
        {% if where %}and ({{ where }}){% endif %}

{% endtest %}
