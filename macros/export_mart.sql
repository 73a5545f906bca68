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
        {%- set order_by = model.config.meta.get('primary_key') or ['all'] -%}
        copy (
            select {{ export_columns(this) }}
            from {{ this }}
            order by {{ order_by | join(', ') }}
        ) to '{{ candidate_path(this.identifier) }}' (format csv, header true)
    {%- endif -%}
{% endmacro %}


{#- The relation's columns for export: "_" columns dropped, text escaped (OWASP CSV injection). -#}
{% macro export_columns(relation) %}
    {%- set selected = [] -%}
    {%- for column in adapter.get_columns_in_relation(relation) if not column.name.startswith('_') -%}
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
        when regexp_matches({{ expression }}, '^[=+\-@\t\r]') then '''' || {{ expression }}
        else {{ expression }}
    end
{%- endmacro %}


{#- Local file of a model's candidate: elt_candidate_path() is registered by loaders.dbt_plugin. -#}
{% macro candidate_path(name) %}
    {%- set found = run_query("select elt_candidate_path('" ~ invocation_id ~ "', '" ~ name ~ "')") -%}
    {{- return(found.columns[0].values()[0]) -}}
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
        {%- set candidate = candidate_path(result.node.name) -%}
        {%- if blockers -%}
            {{ log("not publishing " ~ result.node.name ~ ": " ~ blockers | join(', '), info=true) }}
            {%- do statements.append("select elt_discard_object('" ~ candidate ~ "')") -%}
        {%- else -%}
            {{ log("publishing marts/" ~ result.node.name ~ ".csv", info=true) }}
            {%- do statements.append("select elt_publish_object('" ~ candidate ~ "', 'marts/" ~ result.node.name ~ ".csv')") -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(statements | join(';\n')) }}
{% endmacro %}
