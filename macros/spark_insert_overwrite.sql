{#
    dbt-spark's insert_overwrite, for models whose runs write only the rows
    that changed (as delete+insert does on DuckDB). Spark's plain Parquet
    tables have no delete, so a run overwrites whole partitions; here those
    partitions are written complete: the run's rows, and the rows of the same
    partitions the run does not replace (by unique_key), carried over from
    the table. The run's rows (dbt-spark's temporary view of the model's SQL)
    are cached first: the statement reads them three times and would
    otherwise compute them three times.

    Replaces dbt-spark's get_insert_overwrite_sql (root project macros come
    first); only dbt-spark's incremental materialization calls it.
#}
{% macro get_insert_overwrite_sql(source_relation, target_relation, existing_relation) %}
    {%- set columns = adapter.get_columns_in_relation(target_relation) | map(attribute='quoted') | join(', ') -%}
    {%- set partitions = config.get('partition_by') -%}
    {%- set partitions = [partitions] if partitions is string else partitions -%}
    {%- set unique_key = config.get('unique_key') -%}
    {%- set unique_key = [unique_key] if unique_key is string else unique_key -%}
    {%- if not partitions or not unique_key -%}
        {{ exceptions.raise_compiler_error(
            target_relation ~ ": insert_overwrite here needs partition_by and unique_key"
        ) }}
    {%- endif -%}
    {%- do run_query('cache table ' ~ source_relation) -%}
    insert overwrite table {{ target_relation }}
    {{ partition_cols(label="partition") }}
    select {{ columns }} from {{ source_relation }}
    union all
    select {{ columns }} from {{ target_relation }} as kept
    where
        ({{ partitions | join(', ') }}) in (select distinct {{ partitions | join(', ') }} from {{ source_relation }})
        and not exists (
            select 1 from {{ source_relation }} as changed
            where
                {%- for key in unique_key %}
                {{ 'and ' if not loop.first }}changed.{{ key }} = kept.{{ key }}
                {%- endfor %}
        )
{% endmacro %}
