{#
    What differs between the engines the models run on, DuckDB (the default)
    and Apache Spark (dbt-spark), each behind adapter.dispatch: the models
    call these and stay one set of SQL. A spark__ macro is used on Spark,
    default__ everywhere else.
#}


{#- The type of an instant (with its time zone): DuckDB timestamptz; Spark's timestamp is one. -#}
{% macro timestamptz() %}
    {{- return(adapter.dispatch('timestamptz')()) -}}
{% endmacro %}

{% macro default__timestamptz() %}timestamptz{% endmacro %}

{% macro spark__timestamptz() %}timestamp{% endmacro %}


{#- An instant before any reading: the watermark of an empty table. -#}
{% macro min_timestamp() %}
    {{- return(adapter.dispatch('min_timestamp')()) -}}
{% endmacro %}

{% macro default__min_timestamp() %}cast('-infinity' as timestamptz){% endmacro %}

{#- Spark has no infinite timestamps (and Python's datetime no year 0): any
    instant before the first turnstile reading will do. -#}
{% macro spark__min_timestamp() %}timestamp '1900-01-01 00:00:00'{% endmacro %}


{#-
    Every column but some: `* exclude (...)` on DuckDB, `* except (...)` on
    Spark. `alias` qualifies the star. `built=true` when reading a table this
    project builds incrementally: on Spark it also carries _partition_month
    (complete_partitions()), which is left out too.
-#}
{% macro star_except(columns, alias=none, built=false) %}
    {%- set excluded = columns + (['_partition_month'] if built and target.type == 'spark' else []) -%}
    {{- return(adapter.dispatch('star_except')(excluded, alias)) -}}
{% endmacro %}

{% macro default__star_except(columns, alias) -%}
    {{ alias ~ '.' if alias }}* exclude ({{ columns | join(', ') }})
{%- endmacro %}

{% macro spark__star_except(columns, alias) -%}
    {{ alias ~ '.' if alias }}* except ({{ columns | join(', ') }})
{%- endmacro %}


{#-
    `union all` matching columns by name (DuckDB). Spark SQL has no such
    operator: there the two sides must list the same columns in the same
    order, which callers ensure (both read the same staging columns).
-#}
{% macro union_all_by_name() %}
    {{- return(adapter.dispatch('union_all_by_name')()) -}}
{% endmacro %}

{% macro default__union_all_by_name() %}union all by name{% endmacro %}

{% macro spark__union_all_by_name() %}union all{% endmacro %}


{#-
    The size of a counter's change, |current - previous|, for two bigint
    counters. Two valid ones can be further apart than a bigint holds
    (-2^63 and 2^63 - 1): the difference is taken in 128 bits. DuckDB stores
    it as ubigint, which holds any such size: a decimal(38, 0) column is
    stored as 128-bit integers, and reading one took 12 s per 64.5M rows
    where a ubigint takes 0.05 s (measured on the 256-week benchmark's
    intervals). Spark has no unsigned type: decimal(38, 0) there.
-#}
{% macro counter_delta(current, previous) %}
    {{- return(adapter.dispatch('counter_delta')(current, previous)) -}}
{% endmacro %}

{% macro default__counter_delta(current, previous) -%}
    cast(abs(cast({{ current }} as hugeint) - {{ previous }}) as ubigint)
{%- endmacro %}

{% macro spark__counter_delta(current, previous) -%}
    abs(cast({{ current }} as decimal(38, 0)) - {{ previous }})
{%- endmacro %}


{#- A 64-bit hash of a row's values of `columns` (equal values, equal hash; nulls included). -#}
{% macro row_hash(columns) %}
    {{- return(adapter.dispatch('row_hash')(columns)) -}}
{% endmacro %}

{% macro default__row_hash(columns) -%}
    hash({{ columns | join(', ') }})
{%- endmacro %}

{% macro spark__row_hash(columns) -%}
    xxhash64({{ columns | join(', ') }})
{%- endmacro %}


{#- A date as text in a strftime format (%Y, %m, %d, %H, %M, %S). -#}
{% macro date_text(expression, format) %}
    {{- return(adapter.dispatch('date_text')(expression, format)) -}}
{% endmacro %}

{% macro default__date_text(expression, format) -%}
    strftime({{ expression }}, '{{ format }}')
{%- endmacro %}

{% macro spark__date_text(expression, format) -%}
    date_format({{ expression }}, '{{ java_datetime_pattern(format) }}')
{%- endmacro %}


{#- A strftime format as the Java pattern Spark parses and prints with. -#}
{% macro java_datetime_pattern(format) %}
    {%- set pattern = namespace(text=format) -%}
    {%- for strftime, java in [('%Y', 'yyyy'), ('%m', 'MM'), ('%d', 'dd'), ('%H', 'HH'),
            ('%M', 'mm'), ('%S', 'ss')] -%}
        {%- set pattern.text = pattern.text | replace(strftime, java) -%}
    {%- endfor -%}
    {%- if '%' in pattern.text -%}
        {{ exceptions.raise_compiler_error("no Spark pattern for the format " ~ format) }}
    {%- endif -%}
    {{- return(pattern.text) -}}
{% endmacro %}


{#- Whether a text value starts with a character spreadsheets run (=, +, -, @, tab, CR). -#}
{% macro starts_like_a_formula(expression) %}
    {{- return(adapter.dispatch('starts_like_a_formula')(expression)) -}}
{% endmacro %}

{#-
    The first character against a list, not a regular expression. Exporting
    turnstile_daily's 60 month parts at 256 weeks (11M rows, 7 text columns)
    took 6.5 to 7.5 s this way, 8.1 to 15.4 s with regexp_matches, and 7.6 s
    with no check at all (one-off, three runs each, alternating). DuckDB's literals have no escapes:
    chr(9) and chr(13) are the tab and the carriage return.
-#}
{% macro default__starts_like_a_formula(expression) -%}
    left({{ expression }}, 1) in ('=', '+', '-', '@', chr(9), chr(13))
{%- endmacro %}

{#- Spark unescapes its string literals: \\t reaches the regex as \t. -#}
{% macro spark__starts_like_a_formula(expression) -%}
    {{ expression }} rlike '^[-=+@\\t\\r]'
{%- endmacro %}


{#- A SQL list of text values, empty or not. -#}
{% macro text_list(values) %}
    {{- return(adapter.dispatch('text_list')(values)) -}}
{% endmacro %}

{% macro default__text_list(values) -%}
    {{ "['" ~ values | join("', '") ~ "']" if values else "[]::varchar[]" }}
{%- endmacro %}

{% macro spark__text_list(values) -%}
    {{ "array('" ~ values | join("', '") ~ "')" if values else "cast(array() as array<string>)" }}
{%- endmacro %}


{#-
    How an incremental model writes a run's rows. DuckDB: delete+insert by
    the unique key. Spark's plain Parquet tables have no delete: a run
    overwrites whole partitions (insert_overwrite, by month of the model's
    time column), so it writes complete months (complete_partitions()).
-#}
{% macro incremental_strategy() %}
    {{- return('insert_overwrite' if target.type == 'spark' else 'delete+insert') -}}
{% endmacro %}

{#-
    The partition column of a model on Spark: `column` (a date column of the
    model's own, as contracted marts need), else _partition_month, added by
    complete_partitions(). None on DuckDB.
-#}
{% macro incremental_partitions(column=none) %}
    {{- return([column or '_partition_month'] if target.type == 'spark' else none) -}}
{% endmacro %}


{#-
    The rows an incremental model writes, from its last CTE `rows` (the new
    and changed rows, keyed by `unique_key`), in time order (`order_by`).

    DuckDB (delete+insert) writes them as they are, in time order, so later
    runs' filters on time skip old row groups; with `order_by` none, in the
    order they come (a full build that keeps its input's order, already
    clustered by time, rather than sort the whole history). On Spark a run
    overwrites whole partitions: those of `partition_column` (a date column
    of the rows), or else of _partition_month, the month of `time_column`,
    added to each row; the rows of those partitions the run does not replace
    are carried over by the insert (macros/spark_insert_overwrite.sql).
-#}
{% macro complete_partitions(rows, unique_key, time_column, order_by, partition_column=none) %}
    {{- return(adapter.dispatch('complete_partitions')(
        rows, unique_key, time_column, order_by, partition_column
    )) -}}
{% endmacro %}

{% macro default__complete_partitions(rows, unique_key, time_column, order_by, partition_column) -%}
select * from {{ rows }}
{%- if order_by %}
order by {{ order_by }}
{%- endif %}
{%- endmacro %}

{% macro spark__complete_partitions(rows, unique_key, time_column, order_by, partition_column) -%}
{%- if partition_column -%}
{#- Spark keeps a table's partition column last: the table has it there. #}
select
    {{ star_except([partition_column]) }},
    {{ partition_column }}
from {{ rows }}
{%- else -%}
select
    *,
    cast(date_trunc('MM', {{ time_column }}) as date) as _partition_month
from {{ rows }}
{%- endif %}
{#- One task writes each partition: one file per partition, not one per task. #}
distribute by {{ partition_column or '_partition_month' }}
{%- endmacro %}
