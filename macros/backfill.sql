{#-
    Backfill by month: the full build of a large incremental model on DuckDB,
    one month of its time column per statement.

    A full build in one statement sorts the whole history (the window of each
    turnstile, then the time order the table is kept in), past the memory
    limit: DuckDB spills it to disk and the build takes minutes. One month
    sorts in memory. The model writes its full-build branch as a slice,
    between the bounds backfill_slice() gives, and lists backfill() as a
    post-hook:

        {%- set slice = backfill_slice('timestamp') %}
        ... where reading_at >= {{ slice.low }} and reading_at < {{ slice.high }}

    dbt runs the model's statement first, with no slice chosen (the bounds
    are null, so it creates the table with no rows), then backfill() inserts
    each month in time order, inside the model's transaction (a post-hook's
    default): the table ends in time order.

    The bounds are DuckDB variables (set variable / getvariable), which the
    planner reads as constants: each month's scans skip the row groups of the
    other months, as the incremental filters do (macros/incremental_bounds.sql).
-#}


{#-
    The current slice of a backfill, as SQL: {low, high}, a half-open range
    of the model's time column, of SQL type `data_type`. None when the build
    is not one: an incremental run, another engine (Spark sorts past its
    memory by itself), parsing, or a dbt unit test (its inputs are small
    fixtures, built whole).
-#}
{% macro backfill_slice(data_type) %}
    {%- if target.type != 'duckdb' or not execute or model.resource_type != 'model'
            or is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set name = backfill_variable() -%}
    {#- Typed: an unset variable is a bare null, and `null - interval 7 day` does not bind. -#}
    {{ return({
        'low': "cast(getvariable('" ~ name ~ "_low') as " ~ data_type ~ ")",
        'high': "cast(getvariable('" ~ name ~ "_high') as " ~ data_type ~ ")",
    }) }}
{% endmacro %}


{#- The prefix of this model's backfill variables (one model's never meet another's). -#}
{% macro backfill_variable() %}
    {{- return('elt_backfill_' ~ model.name) -}}
{% endmacro %}


{#-
    Post-hook: inserts each month of `time_column` (a column of `upstream`,
    the relation the model reads its rows from), oldest first, when the
    model's statement was a backfill's (its SQL reads the slice variables).
    Otherwise does nothing. Returns no SQL; the inserts run here.
-#}
{% macro backfill(upstream, time_column) %}
    {%- set name = backfill_variable() -%}
    {%- if not execute or (name ~ '_low') not in (model.compiled_code or '') -%}
        {{ return('') }}
    {%- endif -%}
    {#- The first day of each month from the oldest row's to the newest's, as dates. -#}
    {%- set months -%}
        select
            strftime(month_start, '%Y-%m-%d'),
            strftime(month_start + interval 1 month, '%Y-%m-%d')
        from (
            select
                unnest(generate_series(
                    date_trunc('month', min({{ time_column }})),
                    max({{ time_column }}),
                    interval 1 month
                )) as month_start
            from {{ upstream }}
        )
        order by month_start
    {%- endset -%}
    {%- for month in run_query(months).rows -%}
        {%- do run_query("set variable " ~ name ~ "_low = date '" ~ month[0] ~ "'") -%}
        {%- do run_query("set variable " ~ name ~ "_high = date '" ~ month[1] ~ "'") -%}
        {%- do run_query('insert into ' ~ this ~ ' by name (' ~ model.compiled_code ~ ')') -%}
    {%- endfor -%}
    {%- do run_query('reset variable ' ~ name ~ '_low') -%}
    {%- do run_query('reset variable ' ~ name ~ '_high') -%}
    {{ return('') }}
{% endmacro %}
