{#
    Use a folder's custom schema as is (staging, intermediate, marts) rather
    than dbt's default "<target schema>_<custom schema>", so every target
    reads the same schema names.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
