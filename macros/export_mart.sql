{#
    Write-audit-publish for marts exported as CSV.

    A model opts in with `meta: {export: csv, primary_key: [...]}`. Its
    post-hook (after the model's transaction commits) writes the candidate to
    a local file, <ELT_HOME>/exports/<invocation id>/<model>.csv. At the end
    of the run, publish_marts() uploads a candidate to marts/<model>.csv (one
    PUT: readers see the old object or the new one) only if the model built
    and every test on it ran in this invocation and passed (warn counts as
    passed); otherwise the candidate is deleted and the previously published
    CSV stays as it was. Candidates stay off the bucket, so a run needs only
    PutObject on marts/* (see iam/elt-pipeline-policy.json).

    The CSV: header row, rows ordered by the primary key (an unchanged table
    exports identical bytes), columns starting with "_" left out, and text
    cells a spreadsheet would run as a formula escaped with a leading quote.
#}
{% macro export_mart() %}
    {%- if execute and model.config.get('meta', {}).get('export') == 'csv' -%}
        {%- set meta = model.config.meta -%}
        {%- if meta.get('partition_by') -%}
            {%- set statements = export_partitions(this, meta) -%}
        {%- else -%}
            {%- set statements = [export_csv(
                export_columns(this), this, 'true', meta.get('primary_key') or ['all'],
                candidate_path(this.identifier)
            )] -%}
        {%- endif -%}
        {{- return(run_statements(statements)) -}}
    {%- endif -%}
{% endmacro %}


{#
    A partitioned mart (meta.partition_by: a date column, meta.granularity:
    month (default), year or day) writes to its candidate folder only the
    partitions whose rows changed since the published manifest: rows with a
    _refreshed_at newer than the manifest's refreshed_through, and live
    partitions the manifest does not list (a model without _refreshed_at, or
    with other columns than the published ones, writes them all; unchanged
    bytes are not uploaded again). Beside them: _parts.json (rows and date
    range of each written partition), _state.json (every live partition, the
    latest _refreshed_at, the columns) and _header.csv.
    loaders/partitions.py publishes the folder.

    Rows are ordered by the partition column, then the primary key: days a
    part gains go at its end, so its head stays the bytes already published
    (which the publish copies on the server instead of sending).

    Every statement reads a partition by a constant date range, so DuckDB
    skips the row groups of other dates (the table is kept in time order).
    The live partitions are the published ones plus those with newer rows,
    checked by counting: if the table's rows are not the published rows of
    the unchanged partitions plus the rows of the changed ones (rows went
    away), the partitions are listed from the whole table instead.
#}
{% macro export_partitions(relation, meta) %}
    {%- set formats = {'month': '%Y-%m', 'year': '%Y', 'day': '%Y-%m-%d'} -%}
    {%- set granularity = meta.get('granularity', 'month') -%}
    {%- if granularity not in formats -%}
        {{ exceptions.raise_compiler_error(
            relation.identifier ~ ": granularity must be month, year or day, not " ~ granularity
        ) }}
    {%- endif -%}
    {%- set column = adapter.quote(meta.partition_by) -%}
    {%- set partition = date_text(column, formats[granularity]) -%}
    {%- set order_by = [column] -%}
    {%- for key in meta.get('primary_key') or [] if key != meta.partition_by -%}
        {%- do order_by.append(key) -%}
    {%- endfor -%}
    {%- set folder = candidate_folder(relation.identifier) -%}
    {%- set previous = published_state(relation.identifier) -%}
    {%- set names = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
    {%- set columns = exported_columns(relation) | map(attribute='name') | list -%}
    {%- set incremental = '_refreshed_at' in names and previous.refreshed_through
        and previous.columns == columns -%}
    {%- set changed = [] -%}
    {%- set live = [] -%}
    {%- if incremental -%}
        {%- set since = "cast('" ~ previous.refreshed_through ~ "' as " ~ timestamptz() ~ ")" -%}
        {%- set newer = run_query(
            "select distinct " ~ partition ~ " from " ~ relation ~ " where _refreshed_at > "
            ~ since ~ " order by 1"
        ).columns[0].values() | list -%}
        {%- do changed.extend(newer) -%}
        {%- set kept = namespace(rows=0) -%}
        {%- for value, rows in previous.partitions.items() if value not in newer -%}
            {%- set kept.rows = kept.rows + rows -%}
        {%- endfor -%}
        {%- set counted = run_query(
            "select (select count(*) from " ~ relation ~ "), (select count(*) from " ~ relation
            ~ " where " ~ partitions_filter(column, partition, changed, granularity) ~ ")"
        ).rows[0] -%}
        {%- if counted[0] == kept.rows + counted[1] -%}
            {%- do live.extend(((previous.partitions.keys() | list) + newer) | unique | sort) -%}
        {%- else -%}
            {%- set incremental = false -%}
        {%- endif -%}
    {%- endif -%}
    {%- if not incremental -%}
        {%- do live.extend(run_query(
            "select distinct " ~ partition ~ " from " ~ relation
            ~ " where " ~ column ~ " is not null order by 1"
        ).columns[0].values()) -%}
        {%- do changed.extend(live) -%}
    {%- endif -%}
    {%- set statements = [] -%}
    {%- for value in changed -%}
        {%- do statements.append(export_csv(
            export_columns(relation), relation,
            partitions_filter(column, partition, [value], granularity), order_by,
            folder ~ "/" ~ value ~ ".csv"
        )) -%}
    {%- endfor -%}
    {%- do statements.append(export_json(
        "select " ~ partition ~ " as partition, count(*) as rows, min(" ~ column
        ~ ") as first, max(" ~ column ~ ") as last from " ~ relation ~ " where "
        ~ partitions_filter(column, partition, changed, granularity) ~ " group by 1 order by 1",
        folder ~ "/_parts.json"
    )) -%}
    {%- if '_refreshed_at' not in names -%}
        {%- set refreshed = "null" -%}
    {%- elif incremental -%}
        {#- The newest rows are newer than the published watermark: only they are read. -#}
        {%- set refreshed = "(select max(_refreshed_at) from " ~ relation
            ~ " where _refreshed_at >= " ~ since ~ ")" -%}
    {%- else -%}
        {%- set refreshed = "(select max(_refreshed_at) from " ~ relation ~ ")" -%}
    {%- endif -%}
    {%- do statements.append(export_json(
        "select " ~ text_list(live) ~ " as live, " ~ refreshed
        ~ " as refreshed_through, '" ~ meta.partition_by ~ "' as partition_by, '" ~ granularity
        ~ "' as granularity, " ~ text_list(columns) ~ " as columns",
        folder ~ "/_state.json"
    )) -%}
    {%- do statements.append(export_csv(
        export_columns(relation), relation, 'false', order_by, folder ~ "/_header.csv"
    )) -%}
    {{- return(statements) -}}
{% endmacro %}


{#-
    A filter on the rows of some partitions: the constant date span they
    cover (DuckDB skips the row groups outside it) and the partitions
    themselves. No partitions: no rows.
-#}
{% macro partitions_filter(column, partition, values, granularity) %}
    {%- if not values -%}
        {{- return('false') -}}
    {%- endif -%}
    {%- set first = values | min -%}
    {%- set last = values | max -%}
    {%- if granularity == 'year' -%}
        {%- set low = first ~ '-01-01' -%}
        {%- set high = (last | int + 1) ~ '-01-01' -%}
    {%- elif granularity == 'month' -%}
        {%- set low = first ~ '-01' -%}
        {%- set year, month = last.split('-') | map('int') -%}
        {%- set high = '%04d-%02d-01' | format(year + month // 12, month % 12 + 1) -%}
    {%- else -%}
        {%- set low = first -%}
        {%- set high = (modules.datetime.date.fromisoformat(last)
            + modules.datetime.timedelta(days=1)).isoformat() -%}
    {%- endif -%}
    {{- return(
        column ~ " >= date '" ~ low ~ "' and " ~ column ~ " < date '" ~ high ~ "' and "
        ~ partition ~ " in " ~ "('" ~ values | join("', '") ~ "')"
    ) -}}
{% endmacro %}


{#- Local candidate folder of a partitioned mart: <ELT_HOME>/exports/<invocation>/<model>. -#}
{% macro candidate_folder(name) %}
    {{- return(adapter.dispatch('candidate_folder')(name)) -}}
{% endmacro %}

{#- elt_candidate_folder() is registered by loaders.dbt_plugin (it also checks the names). -#}
{% macro default__candidate_folder(name) %}
    {%- set found = run_query("select elt_candidate_folder('" ~ invocation_id ~ "', '" ~ name ~ "')") -%}
    {{- return(found.columns[0].values()[0]) -}}
{% endmacro %}

{% macro spark__candidate_folder(name) %}
    {{- return(env_var('ELT_HOME') ~ '/exports/' ~ invocation_id ~ '/' ~ name) -}}
{% endmacro %}


{#-
    What the last published manifest of a partitioned mart says:
    {refreshed_through, partitions: {partition: rows}, columns}.
-#}
{% macro published_state(name) %}
    {{- return(adapter.dispatch('published_state')(name)) -}}
{% endmacro %}

{#- elt_published_state() is registered by loaders.dbt_plugin: it reads the manifest from S3. -#}
{% macro default__published_state(name) %}
    {%- set found = run_query("select elt_published_state('" ~ name ~ "')") -%}
    {{- return(fromjson(found.columns[0].values()[0])) -}}
{% endmacro %}

{#-
    On Spark, `elt run` writes every manifest's state to the lake before the
    build, as one line of JSON (loaders/spark.py), and Spark reads it.
-#}
{% macro spark__published_state(name) %}
    {%- set nothing = {'refreshed_through': none, 'partitions': {}, 'columns': none} -%}
    {%- set found = run_query(
        "select value from text.`" ~ env_var('ELT_LAKE_ROOT') ~ "/elt/published.json`"
    ) -%}
    {%- set states = fromjson(found.rows[0][0]) if found.rows else {} -%}
    {{- return(states.get(name, nothing)) -}}
{% endmacro %}


{#-
    A candidate CSV: the columns of the relation's rows matching `where`,
    header first, ordered by `order_by`. DuckDB writes it at `path`. Spark
    writes a folder `<path>.d` of Parquet with each row's place in that
    order (_export_order); loaders/spark.py turns it into the file DuckDB
    would have written, with DuckDB, so both engines publish the same bytes.
-#}
{% macro export_csv(columns, relation, where, order_by, path) %}
    {{- return(adapter.dispatch('export_csv')(columns, relation, where, order_by, path)) -}}
{% endmacro %}

{% macro default__export_csv(columns, relation, where, order_by, path) -%}
    copy (select {{ columns }} from {{ relation }} where {{ where }}
        order by {{ order_by | join(', ') }}) to '{{ path }}' (format csv, header true)
{%- endmacro %}

{% macro spark__export_csv(columns, relation, where, order_by, path) -%}
    insert overwrite directory '{{ path }}.d' using parquet
    select {{ columns }}, row_number() over (order by {{ order_by | join(', ') }}) as _export_order
    from {{ relation }} where {{ where }}
{%- endmacro %}


{#- A candidate JSON file (a JSON object per line) of a query; Spark writes a folder `<path>.d`. -#}
{% macro export_json(query, path) %}
    {{- return(adapter.dispatch('export_json')(query, path)) -}}
{% endmacro %}

{% macro default__export_json(query, path) -%}
    copy ({{ query }}) to '{{ path }}' (format json)
{%- endmacro %}

{#- Timestamps to the microsecond, as DuckDB writes them: the next run compares with them. -#}
{% macro spark__export_json(query, path) -%}
    insert overwrite directory '{{ path }}.d' using json
    options (timestampFormat "yyyy-MM-dd HH:mm:ss.SSSSSSXXX")
    {{ query }}
{%- endmacro %}


{#- Statements a hook runs: DuckDB takes them as one string; Spark runs one at a time. -#}
{% macro run_statements(statements) %}
    {{- return(adapter.dispatch('run_statements')(statements)) -}}
{% endmacro %}

{% macro default__run_statements(statements) %}
    {{- return(statements | join(";\n")) -}}
{% endmacro %}

{% macro spark__run_statements(statements) %}
    {%- for statement in statements -%}
        {%- do run_query(statement) -%}
    {%- endfor -%}
    {{- return('') -}}
{% endmacro %}


{#- The relation's columns for export: "_" columns dropped, text escaped (OWASP CSV injection). -#}
{% macro export_columns(relation) %}
    {%- set selected = [] -%}
    {%- for column in exported_columns(relation) -%}
        {%- set name = adapter.quote(column.name) -%}
        {%- if column.is_string() -%}
            {%- do selected.append(csv_safe_text(name) ~ ' as ' ~ name) -%}
        {%- else -%}
            {%- do selected.append(name) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ selected | join(', ') }}
{% endmacro %}


{#- A text cell starting with = + - @ tab or CR gets a leading ' so spreadsheets show it as text. -#}
{% macro csv_safe_text(expression) -%}
    case
        when {{ starts_like_a_formula(expression) }} then '''' || {{ expression }}
        else {{ expression }}
    end
{%- endmacro %}


{#-
    The relation's columns a CSV holds: not the "_" ones, in the order the
    model's YAML declares them (Spark keeps a table's partition column last),
    any undeclared one after them in the table's order.
-#}
{% macro exported_columns(relation) %}
    {%- set declared = (model.columns or {}).keys() | list if model is mapping else [] -%}
    {%- set found = adapter.get_columns_in_relation(relation) -%}
    {%- set ordered = [] -%}
    {%- for name in declared -%}
        {%- for column in found if column.name == name -%}
            {%- do ordered.append(column) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- for column in found if column.name not in declared -%}
        {%- do ordered.append(column) -%}
    {%- endfor -%}
    {%- set exported = [] -%}
    {%- for column in ordered if not column.name.startswith('_') -%}
        {%- do exported.append(column) -%}
    {%- endfor -%}
    {{- return(exported) -}}
{% endmacro %}


{#- Local file of a model's candidate: <ELT_HOME>/exports/<invocation>/<model>.csv. -#}
{% macro candidate_path(name) %}
    {{- return(adapter.dispatch('candidate_path')(name)) -}}
{% endmacro %}

{#- elt_candidate_path() is registered by loaders.dbt_plugin (it also checks the names). -#}
{% macro default__candidate_path(name) %}
    {%- set found = run_query("select elt_candidate_path('" ~ invocation_id ~ "', '" ~ name ~ "')") -%}
    {{- return(found.columns[0].values()[0]) -}}
{% endmacro %}

{% macro spark__candidate_path(name) %}
    {{- return(env_var('ELT_HOME') ~ '/exports/' ~ invocation_id ~ '/' ~ name ~ '.csv') -}}
{% endmacro %}


{#
    on-run-end: publish each exported model whose build and tests passed.
    elt_publish_object() is registered by loaders.dbt_plugin: one PUT of the
    complete candidate file to its final key, then the file's deletion.
    Readers see the old CSV or the new one, never part of one.
#}
{% macro publish_marts(results) %}
    {%- if not execute -%}{{ return('') }}{%- endif -%}
    {%- set statuses = {} -%}
    {%- for result in results -%}
        {%- do statuses.update({result.node.unique_id: result.status | string}) -%}
    {%- endfor -%}
    {%- set statements = [] -%}
    {%- for result in results if result.node.resource_type == 'model'
            and result.node.config.get('meta', {}).get('export') == 'csv' -%}
        {%- set model_id = result.node.unique_id -%}
        {%- set blockers = [] -%}
        {%- if statuses[model_id] != 'success' -%}
            {%- do blockers.append('the model ' ~ statuses[model_id]) -%}
        {%- endif -%}
        {%- for test in graph.nodes.values() if test.resource_type == 'test'
                and model_id in test.depends_on.nodes -%}
            {%- set status = statuses.get(test.unique_id, 'not run') -%}
            {%- if status not in ['pass', 'warn', 'success'] -%}
                {%- do blockers.append(test.name ~ ' ' ~ status) -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set partitioned = result.node.config.meta.get('partition_by') -%}
        {%- if partitioned -%}
            {%- set candidate = candidate_folder(result.node.name) -%}
        {%- else -%}
            {%- set candidate = candidate_path(result.node.name) -%}
        {%- endif -%}
        {%- if blockers -%}
            {{ log("not publishing " ~ result.node.name ~ ": " ~ blockers | join(', '), info=true) }}
            {%- do statements.append(publish_action('discard', candidate, result.node.name)) -%}
        {%- elif partitioned -%}
            {{ log("publishing the changed parts of marts/" ~ result.node.name ~ "/", info=true) }}
            {%- do statements.append(publish_action('partitions', candidate, result.node.name)) -%}
        {%- else -%}
            {{ log("publishing marts/" ~ result.node.name ~ ".csv", info=true) }}
            {%- do statements.append(publish_action('object', candidate, result.node.name)) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(run_statements(statements | reject('equalto', '') | list)) }}
{% endmacro %}



{#-
    What publish_marts() decided for a candidate: `discard`, or publish it
    (`partitions` of a partitioned mart, `object` otherwise). On DuckDB the
    functions loaders.dbt_plugin registers act at once. On Spark the decision
    is written beside the candidate (`<candidate>.publish.d`), and `elt run`
    publishes the candidates so marked once dbt is done (loaders/spark.py):
    an unmarked candidate is discarded.
-#}
{% macro publish_action(action, candidate, name) %}
    {{- return(adapter.dispatch('publish_action')(action, candidate, name)) -}}
{% endmacro %}

{% macro default__publish_action(action, candidate, name) %}
    {%- if action == 'discard' -%}
        {{- return("select elt_discard_object('" ~ candidate ~ "')") -}}
    {%- elif action == 'partitions' -%}
        {{- return("select elt_publish_partitions('" ~ candidate ~ "', '" ~ name ~ "', '"
            ~ invocation_id ~ "')") -}}
    {%- else -%}
        {{- return("select elt_publish_object('" ~ candidate ~ "', 'marts/" ~ name ~ ".csv')") -}}
    {%- endif -%}
{% endmacro %}

{% macro spark__publish_action(action, candidate, name) %}
    {%- if action == 'discard' -%}
        {{- return('') -}}
    {%- endif -%}
    {{- return("insert overwrite directory '" ~ candidate ~ ".publish.d' using json select '"
        ~ action ~ "' as action, '" ~ name ~ "' as model") -}}
{% endmacro %}
