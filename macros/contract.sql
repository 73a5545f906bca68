{#
    Staging's casts, rendered from the source contract: the `data_type` of a
    source column in its YAML and, for dates, times and timestamps, its
    `config.meta.format` (a strptime format). The loader derives its row checks
    from the same lines (loaders/contract.py) and quarantines every row whose
    value would not convert, so these casts cannot fail on a landed row.

        {{ cast_source_column('mta', 'turnstile', 'date', 'source.date') }}
        -- cast(strptime(trim(source.date), '%m/%d/%Y') as date)
#}
{% macro cast_source_column(source_name, table_name, column_name, expression) %}
    {%- if not execute -%}
        {#- Parsing only collects refs and sources: no graph to read yet. -#}
        {{- return('null') -}}
    {%- endif -%}
    {%- set column = source_column_contract(source_name, table_name, column_name) -%}
    {{- return(adapter.dispatch('cast_source_column')(column, expression)) -}}
{% endmacro %}


{% macro default__cast_source_column(column, expression) %}
    {%- set data_type = (column.data_type or 'varchar') | lower -%}
    {%- set format = column.format -%}
    {%- if data_type in ['varchar', 'text', 'string'] -%}
        trim({{ expression }})
    {%- elif format and data_type == 'timestamp' -%}
        strptime(trim({{ expression }}), '{{ format }}')
    {%- elif format -%}
        cast(strptime(trim({{ expression }}), '{{ format }}') as {{ data_type }})
    {%- elif data_type in ['boolean', 'bool'] -%}
        cast(trim({{ expression }}) as {{ data_type }})
    {%- else -%}
        {#-
            A number: no trim(). The cast itself skips spaces around the
            digits (' 0042 ' is 42), and the loader landed only values of
            the form ' *<number> *' (loaders/contract.py), so the result is
            the same. The trim cost more than the cast: on the 256-week raw
            table (64.5M rows), casting both counters took 6.9 s with it and
            2.5 to 3.0 s without, and a full build of the deduplicated
            readings casts them twice (measured one-off).
        -#}
        cast({{ expression }} as {{ data_type }})
    {%- endif -%}
{% endmacro %}


{#-
    Spark: a date or timestamp parses with the Java pattern of the declared
    format; Spark has no time-of-day type, so a time is the interval since
    midnight (a date plus a time is then a timestamp, as in DuckDB). The
    session time zone is UTC (profiles.yml), so midnight is 00:00:00.
-#}
{% macro spark__cast_source_column(column, expression) %}
    {%- set data_type = (column.data_type or 'string') | lower -%}
    {%- set format = column.format -%}
    {%- if data_type in ['varchar', 'text', 'string'] -%}
        trim({{ expression }})
    {%- elif format and data_type == 'time' -%}
        (to_timestamp(trim({{ expression }}), '{{ java_datetime_pattern(format) }}')
            - timestamp '1970-01-01 00:00:00')
    {%- elif format and data_type == 'date' -%}
        to_date(trim({{ expression }}), '{{ java_datetime_pattern(format) }}')
    {%- elif format -%}
        to_timestamp(trim({{ expression }}), '{{ java_datetime_pattern(format) }}')
    {%- else -%}
        cast(trim({{ expression }}) as {{ data_type }})
    {%- endif -%}
{% endmacro %}


{#-
    A source column's declared data_type and format: from the manifest, or,
    in a unit test (whose graph holds no sources), from the same YAML read by
    the loader (elt_source_contract(), registered by loaders.dbt_plugin).
-#}
{% macro source_column_contract(source_name, table_name, column_name) %}
    {%- if graph.get('sources') is none -%}
        {%- set found = run_query(
            "select elt_source_contract('" ~ source_name ~ "', '" ~ table_name
            ~ "', '" ~ column_name ~ "')"
        ) -%}
        {{- return(fromjson(found.columns[0].values()[0])) -}}
    {%- endif -%}
    {%- set found = graph.sources.values()
        | selectattr('source_name', 'equalto', source_name)
        | selectattr('name', 'equalto', table_name)
        | list -%}
    {%- if not found -%}
        {{ exceptions.raise_compiler_error("no source " ~ source_name ~ "." ~ table_name) }}
    {%- endif -%}
    {%- set column = found[0].columns.get(column_name) -%}
    {%- if column is none -%}
        {{ exceptions.raise_compiler_error(
            "source " ~ source_name ~ "." ~ table_name ~ " declares no column " ~ column_name
        ) }}
    {%- endif -%}
    {%- set meta = column.get('config', {}).get('meta') or column.get('meta') or {} -%}
    {{- return({'data_type': column.get('data_type'), 'format': meta.get('format')}) -}}
{% endmacro %}
