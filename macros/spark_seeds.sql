{#
    Seeds on Spark, value by value as SQL literals. dbt-spark 1.11's session
    connection pastes each value between quotes as it is: a name with an
    apostrophe (a station) breaks the statement, and an empty cell becomes the
    text 'None'. Here a value is escaped as Spark reads string literals
    (backslash, quote) and an empty cell is null, as DuckDB loads it.
    Found by the Spark build of seeds/remote_booth_station.csv.
#}
{% macro spark__load_csv_rows(model, agate_table) %}
    {%- set column_override = model['config'].get('column_types', {}) -%}
    {%- set statements = [] -%}
    {%- for chunk in agate_table.rows | batch(get_batch_size()) -%}
        {%- set values = [] -%}
        {%- for row in chunk -%}
            {%- set cells = [] -%}
            {%- for col_name in agate_table.column_names -%}
                {%- set type = column_override.get(
                    col_name, adapter.convert_type(agate_table, loop.index0)
                ) -%}
                {%- set value = row[loop.index0] -%}
                {%- if value is none -%}
                    {%- do cells.append('cast(null as ' ~ type ~ ')') -%}
                {%- else -%}
                    {%- set text = (value | string) | replace('\\', '\\\\') | replace("'", "\\'") -%}
                    {#- A text literal is text already: a cast per cell only slows Spark's parser. -#}
                    {%- if type | lower == 'string' -%}
                        {%- do cells.append("'" ~ text ~ "'") -%}
                    {%- else -%}
                        {%- do cells.append("cast('" ~ text ~ "' as " ~ type ~ ")") -%}
                    {%- endif -%}
                {%- endif -%}
            {%- endfor -%}
            {%- do values.append('(' ~ cells | join(', ') ~ ')') -%}
        {%- endfor -%}
        {%- set sql = 'insert into ' ~ this.render() ~ ' values ' ~ values | join(', ') -%}
        {%- do adapter.add_query(sql, abridge_sql_log=True) -%}
        {%- do statements.append(sql) -%}
    {%- endfor -%}
    {{- return(statements[0] if statements else '') -}}
{% endmacro %}
