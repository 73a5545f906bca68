{#
    Post-hook: export the model to s3://<bucket>/marts/<model>.csv, header
    included. A model opts in with `meta: {export: csv}`; rows are ordered by
    `meta.primary_key` so an unchanged table exports identical bytes.
    Runs after the model's transaction commits (see dbt_project.yml).
#}
{% macro export_mart() %}
    {%- set meta = model.config.get('meta', {}) -%}
    {%- if meta.get('export') == 'csv' and execute -%}
        {%- set order_by = meta.get('primary_key') or ['all'] -%}
        copy (
            select * from {{ this }}
            order by {{ order_by | join(', ') }}
        ) to '{{ mart_uri(this.identifier) }}' (format csv, header true)
    {%- endif -%}
{% endmacro %}


{#- s3://<bucket>/marts/<name>.csv, the bucket from the target's loaders.dbt_plugin block. -#}
{% macro mart_uri(name) %}
    {{- return('s3://' ~ lake_bucket() ~ '/marts/' ~ name ~ '.csv') -}}
{% endmacro %}


{% macro lake_bucket() %}
    {%- for plugin in target.get('plugins') or [] -%}
        {%- if plugin.get('module') == 'loaders.dbt_plugin' and plugin.get('config', {}).get('bucket') -%}
            {{- return(plugin['config']['bucket']) -}}
        {%- endif -%}
    {%- endfor -%}
    {{- exceptions.raise_compiler_error("profiles.yml: target '" ~ target.name ~ "' has no loaders.dbt_plugin block with a bucket") -}}
{% endmacro %}
