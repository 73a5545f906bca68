{% macro incremental_bounds(upstream, changed_column, span_column, span_type) %}
    {#-
        The bounds an incremental model's run reads, as constants of its SQL.

        since: the newest `changed_column` (a timestamptz) in {{ this }}; the
        upstream rows after it are what changed. low / high: the oldest and
        newest `span_column` (of SQL type `span_type`) of those rows.

        DuckDB skips a table's row groups by a constant compared with their
        min/max, but a bound given as a scalar subquery is only known while the
        scan runs, so every row of the history is read (the measured figures
        are in the README's Benchmarks section). Both tables are kept in time
        order, so constants let a run read about what changed.

        The lookups run before the model's statement, in the same build. When
        nothing is being executed (parsing) and in dbt unit tests (whose
        relations are fixtures inside the statement), the same bounds are
        rendered as the scalar subqueries they replace.

        Returns: a dict of SQL expressions {since, low, high}.
    -#}
    {%- set since_sql -%}
        select coalesce(max(built.{{ changed_column }}), {{ min_timestamp() }})
        from {{ this }} as built
    {%- endset -%}
    {%- if not execute or model.resource_type == 'unit_test' -%}
        {%- set changed -%}
            (select * from {{ upstream }} where {{ changed_column }} > ({{ since_sql }}))
        {%- endset -%}
        {{ return({
            'since': '(' ~ since_sql ~ ')',
            'low': '(select min(span.' ~ span_column ~ ') from ' ~ changed ~ ' as span)',
            'high': '(select max(span.' ~ span_column ~ ') from ' ~ changed ~ ' as span)',
        }) }}
    {%- endif -%}
    {#- As text: a timestamptz printed by DuckDB reads back to the same microsecond. -#}
    {%- set since = run_query(
        'select cast((' ~ since_sql ~ ') as ' ~ dbt.type_string() ~ ')'
    ).columns[0].values()[0] -%}
    {%- set since_literal = "cast('" ~ since ~ "' as " ~ timestamptz() ~ ")" -%}
    {%- set span_sql -%}
        select
            cast(min({{ span_column }}) as {{ dbt.type_string() }}),
            cast(max({{ span_column }}) as {{ dbt.type_string() }})
        from {{ upstream }}
        where {{ changed_column }} > {{ since_literal }}
    {%- endset -%}
    {%- set span = run_query(span_sql).rows[0] -%}
    {#- Nothing changed: typed null bounds, which no row is between. -#}
    {%- set low = "'" ~ span[0] ~ "'" if span[0] is not none else 'null' -%}
    {%- set high = "'" ~ span[1] ~ "'" if span[1] is not none else 'null' -%}
    {{ return({
        'since': since_literal,
        'low': 'cast(' ~ low ~ ' as ' ~ span_type ~ ')',
        'high': 'cast(' ~ high ~ ' as ' ~ span_type ~ ')',
    }) }}
{% endmacro %}
